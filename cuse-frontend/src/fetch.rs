//! Staged fetching of an unrestricted ioctl's memory.
//!
//! With `CUSE_UNRESTRICTED_IOCTL` the kernel first sends an ioctl with no
//! data; the server answers `FUSE_IOCTL_RETRY` with the caller's memory
//! ranges it wants copied in and the ranges results go to. Nested memory
//! (the plane array of an mplane buffer, the control array of
//! `S_EXT_CTRLS` and its payloads) takes one more round per level. Each
//! round is planned from the data that arrived, so a retry carries no
//! server-side state: [`Need::satisfied`] decides from `(in_size, out_size)`
//! alone whether everything is here. A client that changes its memory
//! between rounds is asked again (its own thread loops, nobody else).

use crate::cuse::IoVec;

/// Memory ranges wanted for one round.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Need {
    /// Copied in, in order.
    pub input: Vec<IoVec>,
    /// Written back, in order.
    pub output: Vec<IoVec>,
}

impl Need {
    /// Adds one range, in and/or out.
    pub fn add(&mut self, base: u64, len: usize, input: bool, output: bool) {
        let v = IoVec {
            base,
            len: len as u64,
        };
        if input {
            self.input.push(v);
        }
        if output {
            self.output.push(v);
        }
    }

    /// Bytes copied in.
    pub fn in_len(&self) -> usize {
        self.input.iter().map(|v| v.len as usize).sum()
    }

    /// Bytes written back.
    pub fn out_len(&self) -> usize {
        self.output.iter().map(|v| v.len as usize).sum()
    }

    /// True when the request that arrived carried exactly these ranges.
    pub fn satisfied(&self, in_size: u32, out_size: u32) -> bool {
        self.in_len() == in_size as usize && self.out_len() == out_size as usize
    }
}

/// Splits `data` into consecutive pieces of the given lengths; `None` when
/// the lengths do not add up to exactly `data.len()`.
pub fn split<'a>(data: &'a [u8], lens: &[usize]) -> Option<Vec<&'a [u8]>> {
    let mut out = Vec::with_capacity(lens.len());
    let mut rest = data;
    for &n in lens {
        if n > rest.len() {
            return None;
        }
        let (a, b) = rest.split_at(n);
        out.push(a);
        rest = b;
    }
    rest.is_empty().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn need_totals_and_split() {
        let mut n = Need::default();
        n.add(0x1000, 88, true, true);
        n.add(0x2000, 128, true, false);
        assert_eq!((n.in_len(), n.out_len()), (216, 88));
        assert!(n.satisfied(216, 88));
        assert!(!n.satisfied(88, 88));
        let d = [1u8, 2, 3, 4, 5];
        assert_eq!(split(&d, &[2, 3]).unwrap(), vec![&d[..2], &d[2..]]);
        assert!(split(&d, &[2, 2]).is_none());
        assert!(split(&d, &[2, 4]).is_none());
    }
}
