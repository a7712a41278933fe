//! Annex B byte streams (H.264, HEVC): NAL units between start codes.

/// The next NAL unit of `data` at or after `pos`, without its start code
/// and trailing zero bytes, as a byte range; `pos` moves past it.
pub(crate) fn next_nal(data: &[u8], pos: &mut usize) -> Option<(usize, usize)> {
    let find = |from: usize| {
        data.get(from..)?
            .windows(3)
            .position(|w| w == [0, 0, 1])
            .map(|p| from + p)
    };
    let sc = find(*pos)?;
    let start = sc + 3;
    let mut end = find(start).unwrap_or(data.len());
    *pos = end;
    while end > start && data[end - 1] == 0 {
        end -= 1; // trailing_zero_8bits / first byte of a 4-byte start code
    }
    Some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nal_units_between_start_codes() {
        let data = [
            0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 0, 1, 0x65, 4,
        ];
        let mut pos = 0;
        let mut got = Vec::new();
        while let Some((s, e)) = next_nal(&data, &mut pos) {
            got.push(data[s..e].to_vec());
        }
        assert_eq!(got, [vec![0x67, 1, 2], vec![0x68, 3], vec![0x65, 4]]);
        assert_eq!(next_nal(&[1, 2, 3], &mut 0), None);
    }
}
