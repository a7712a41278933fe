//! VP8 (IVF) to V4L2 stateless jobs.
//!
//! Frame header parsing (including the probability updates and the boolean
//! decoder state after the header) is cros-codecs' VP8 parser. Here: the
//! `V4L2_CID_STATELESS_VP8_FRAME` control, the last / golden / altref
//! reference timestamps (with the golden / altref buffer copies), and one
//! job per frame. The OUTPUT buffer holds the whole frame as stored in the
//! IVF file (`V4L2_PIX_FMT_VP8_FRAME`).
//!
//! VP8 has no `show_existing_frame`: a frame with `show_frame = 0` (an
//! altref) is decoded and never displayed by itself.

use std::collections::VecDeque;

use cros_codecs::codec::vp8::parser::{Header, Parser};
use decoder_core::ctrl::vp8::*;
use decoder_core::ctrl::{Codec, ControlValues};
use zerocopy::FromZeros;

use crate::ivf::{next_job_of, FrameEvent, FrameStreamParser, IvfReader};
use crate::{ClientError, DisplayKey, Job, JobFlags, PictureInfo, StreamParser};

/// Timestamp spacing of successive jobs (ns).
pub const TIMESTAMP_STEP: u64 = 1000;

/// Counters of what the parser met.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Vp8Stats {
    /// Jobs emitted.
    pub frames: u64,
    /// Frames not shown.
    pub hidden: u64,
    /// Key frames.
    pub key_frames: u64,
    /// Largest DCT partition count.
    pub max_partitions: u8,
}

/// VP8 [`FrameStreamParser`] over an IVF file.
pub struct Vp8Parser {
    ivf: IvfReader,
    parser: Parser,
    events: VecDeque<FrameEvent>,
    last: u64,
    golden: u64,
    alt: u64,
    next_ts: u64,
    shown: i64,
    seen_key: bool,
    /// Width, height and scaling codes of the last key frame (only key
    /// frames code them; every frame's control carries them).
    dims: (u16, u16, u8, u8),
    stats: Vp8Stats,
}

impl std::fmt::Debug for Vp8Parser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vp8Parser")
            .field("stats", &self.stats)
            .finish()
    }
}

/// The frame control for a parsed header, given the parser state after it
/// (segmentation and loop filter deltas persist across frames) and the
/// reference timestamps.
pub fn frame_control(
    h: &Header,
    parser: &Parser,
    last: u64,
    golden: u64,
    alt: u64,
) -> V4l2CtrlVp8Frame {
    let mut c = V4l2CtrlVp8Frame::new_zeroed();
    let seg = parser.segmentation();
    c.segment.quant_update = seg.quantizer_update_value;
    c.segment.lf_update = seg.lf_update_value;
    c.segment.segment_probs = seg.segment_prob;
    let f = |on: bool, bit: u32| if on { bit } else { 0 };
    c.segment.flags = f(seg.segmentation_enabled, V4L2_VP8_SEGMENT_FLAG_ENABLED)
        | f(
            seg.update_mb_segmentation_map,
            V4L2_VP8_SEGMENT_FLAG_UPDATE_MAP,
        )
        | f(
            seg.update_segment_feature_data,
            V4L2_VP8_SEGMENT_FLAG_UPDATE_FEATURE_DATA,
        )
        // segment_feature_mode: 1 = absolute values, 0 = deltas.
        | f(
            !seg.segment_feature_mode,
            V4L2_VP8_SEGMENT_FLAG_DELTA_VALUE_MODE,
        );
    let lf = parser.mb_lf_adjust();
    c.lf.ref_frm_delta = lf.ref_frame_delta;
    c.lf.mb_mode_delta = lf.mb_mode_delta;
    c.lf.sharpness_level = h.sharpness_level;
    c.lf.level = h.loop_filter_level;
    c.lf.flags = f(lf.loop_filter_adj_enable, V4L2_VP8_LF_ADJ_ENABLE)
        | f(lf.mode_ref_lf_delta_update, V4L2_VP8_LF_DELTA_UPDATE)
        | f(h.filter_type, V4L2_VP8_LF_FILTER_TYPE_SIMPLE);
    let q = &h.quant_indices;
    c.quant.y_ac_qi = q.y_ac_qi;
    c.quant.y_dc_delta = q.y_dc_delta;
    c.quant.y2_dc_delta = q.y2_dc_delta;
    c.quant.y2_ac_delta = q.y2_ac_delta;
    c.quant.uv_dc_delta = q.uv_dc_delta;
    c.quant.uv_ac_delta = q.uv_ac_delta;
    c.entropy.coeff_probs = h.coeff_prob;
    c.entropy.y_mode_probs = h.mode_probs.intra_16x16_prob;
    c.entropy.uv_mode_probs = h.mode_probs.intra_chroma_prob;
    c.entropy.mv_probs = h.mv_prob;
    c.coder_state.range = h.bd_range as u8;
    c.coder_state.value = h.bd_value as u8;
    c.coder_state.bit_count = h.bd_count as u8;
    c.width = h.width;
    c.height = h.height;
    c.horizontal_scale = h.horiz_scale_code;
    c.vertical_scale = h.vert_scale_code;
    c.version = h.version;
    c.prob_skip_false = h.prob_skip_false;
    c.prob_intra = h.prob_intra;
    c.prob_last = h.prob_last;
    c.prob_gf = h.prob_golden;
    c.num_dct_parts = h.num_dct_partitions() as u8;
    c.first_part_size = h.first_part_size;
    c.first_part_header_bits = h.header_size;
    c.dct_part_sizes = h.partition_size;
    if !h.key_frame {
        c.last_frame_ts = last;
        c.golden_frame_ts = golden;
        c.alt_frame_ts = alt;
    }
    c.flags = u64::from(f(h.key_frame, V4L2_VP8_FRAME_FLAG_KEY_FRAME as u32))
        | u64::from(f(h.show_frame, V4L2_VP8_FRAME_FLAG_SHOW_FRAME as u32))
        | u64::from(f(
            h.mb_no_coeff_skip,
            V4L2_VP8_FRAME_FLAG_MB_NO_SKIP_COEFF as u32,
        ))
        | u64::from(f(
            h.sign_bias_golden,
            V4L2_VP8_FRAME_FLAG_SIGN_BIAS_GOLDEN as u32,
        ))
        | u64::from(f(
            h.sign_bias_alternate,
            V4L2_VP8_FRAME_FLAG_SIGN_BIAS_ALT as u32,
        ));
    c
}

impl Vp8Parser {
    /// A parser over an IVF file's bytes.
    pub fn new(ivf: Vec<u8>) -> Result<Self, ClientError> {
        let ivf = IvfReader::new(ivf)?;
        if &ivf.header().fourcc != b"VP80" {
            return Err(ClientError::Unsupported(format!(
                "IVF fourcc {:?} is not VP80",
                String::from_utf8_lossy(&ivf.header().fourcc)
            )));
        }
        Ok(Self {
            ivf,
            parser: Parser::default(),
            events: VecDeque::new(),
            last: 0,
            golden: 0,
            alt: 0,
            next_ts: TIMESTAMP_STEP,
            shown: 0,
            seen_key: false,
            dims: (0, 0, 0, 0),
            stats: Vp8Stats::default(),
        })
    }

    /// What the parser met so far.
    pub fn stats(&self) -> Vp8Stats {
        self.stats
    }

    fn parse_frame(&mut self, data: &[u8]) -> Result<(), ClientError> {
        if data.is_empty() {
            // A dropped frame: nothing to decode, nothing new to show.
            return Ok(());
        }
        let frame = self
            .parser
            .parse_frame(data)
            .map_err(|e| ClientError::Bitstream(e.to_string()))?;
        let mut h = frame.header.clone();
        if h.key_frame {
            self.dims = (h.width, h.height, h.horiz_scale_code, h.vert_scale_code);
        } else {
            (h.width, h.height, h.horiz_scale_code, h.vert_scale_code) = self.dims;
        }
        if !h.key_frame && !self.seen_key {
            return Err(ClientError::Bitstream(
                "stream does not start with a key frame".into(),
            ));
        }
        self.seen_key |= h.key_frame;
        let ts = self.next_ts;
        self.next_ts += TIMESTAMP_STEP;
        let ctrl = frame_control(&h, &self.parser, self.last, self.golden, self.alt);
        let mut controls = ControlValues::new();
        controls.set(&ctrl);

        let (w, hgt) = (u32::from(h.width), u32::from(h.height));
        let mut pic = PictureInfo {
            key: DisplayKey { epoch: 0, order: 0 },
            max_reorder: 0,
            visible: (0, 0, w, hgt),
            coded: (w.next_multiple_of(16), hgt.next_multiple_of(16)),
            bit_depth: 8,
        };
        if h.show_frame {
            self.shown += 1;
            pic.key.order = self.shown;
        } else {
            self.stats.hidden += 1;
        }
        self.stats.frames += 1;
        self.stats.key_frames += u64::from(h.key_frame);
        self.stats.max_partitions = self.stats.max_partitions.max(ctrl.num_dct_parts);

        // Reference buffer updates, in libvpx's order: altref copy, golden
        // copy (which may take the altref just copied), then refreshes.
        if h.key_frame {
            (self.last, self.golden, self.alt) = (ts, ts, ts);
        } else {
            if !h.refresh_alternate_frame {
                match h.copy_buffer_to_alternate {
                    1 => self.alt = self.last,
                    2 => self.alt = self.golden,
                    _ => {}
                }
            }
            if !h.refresh_golden_frame {
                match h.copy_buffer_to_golden {
                    1 => self.golden = self.last,
                    2 => self.golden = self.alt,
                    _ => {}
                }
            }
            if h.refresh_golden_frame {
                self.golden = ts;
            }
            if h.refresh_alternate_frame {
                self.alt = ts;
            }
            if h.refresh_last {
                self.last = ts;
            }
        }
        let job = Job {
            codec: Codec::Vp8,
            controls,
            bitstream: frame.as_ref().to_vec(),
            timestamp: ts,
            flags: JobFlags::default(),
            picture: pic,
        };
        self.events.push_back(FrameEvent::Decode {
            job: Box::new(job),
            shown: h.show_frame,
            slots: vec![self.last, self.golden, self.alt],
        });
        Ok(())
    }
}

impl FrameStreamParser for Vp8Parser {
    fn next_event(&mut self) -> Result<Option<FrameEvent>, ClientError> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(Some(e));
            }
            let Some((_, data)) = self.ivf.next_frame()? else {
                return Ok(None);
            };
            let data = data.to_vec();
            self.parse_frame(&data)?;
        }
    }
}

impl StreamParser for Vp8Parser {
    fn next_job(&mut self) -> Result<Option<Job>, ClientError> {
        next_job_of(self)
    }
}
