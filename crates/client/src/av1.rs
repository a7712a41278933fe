//! AV1 (IVF, low-overhead OBU syntax) to V4L2 stateless jobs.
//!
//! OBU parsing (sequence header, frame header, tile groups, reference state)
//! is cros-codecs' AV1 parser. Here: the V4L2 control structs, the reference
//! slot timestamps, and the packing of one frame into one job.
//!
//! OUTPUT buffer content (`V4L2_PIX_FMT_AV1_FRAME`: "AV1 parsed frame,
//! including the frame header"): the frame's OBUs as they appear in the
//! stream, with their OBU headers: an `OBU_FRAME`, or an `OBU_FRAME_HEADER`
//! and its `OBU_TILE_GROUP`s. Temporal delimiters, metadata and padding are
//! dropped. The sequence header OBU is included only with
//! [`Av1Options::include_sequence_header`]; otherwise, like GStreamer, the
//! sequence travels in `V4L2_CID_STATELESS_AV1_SEQUENCE` alone. Tile group
//! entry offsets count from the start of the OUTPUT buffer.
//!
//! A `show_existing_frame` header codes no picture: it becomes a
//! [`FrameEvent::ShowExisting`] naming the job that decoded the frame (and,
//! for a key frame, refreshes every reference slot with it).

use std::collections::VecDeque;
use std::rc::Rc;

use cros_codecs::codec::av1::parser::{
    BitDepth, FrameHeaderObu, FrameType, ObuAction, ObuType, ParsedObu, Parser, SequenceHeaderObu,
};
use decoder_core::ctrl::av1::*;
use decoder_core::ctrl::{Codec, CompoundControl, ControlValues};
use zerocopy::{FromZeros, IntoBytes};

use crate::ivf::{next_job_of, FrameEvent, FrameStreamParser, IvfReader};
use crate::{ClientError, DisplayKey, Job, JobFlags, PictureInfo, StreamParser};

/// Timestamp spacing of successive jobs (ns).
pub const TIMESTAMP_STEP: u64 = 1000;

/// How jobs are built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Av1Options {
    /// Put the sequence header OBU into the OUTPUT buffer of the first job
    /// after it appears in the stream (otherwise only the sequence control
    /// carries it).
    pub include_sequence_header: bool,
}

/// Counters of what the parser met.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Av1Stats {
    /// Jobs emitted (decoded frames).
    pub frames: u64,
    /// Frames decoded but not shown when decoded.
    pub hidden: u64,
    /// `show_existing_frame` headers.
    pub show_existing: u64,
    /// Key frames.
    pub key_frames: u64,
    /// Largest tile count of a frame.
    pub max_tiles: u32,
    /// Frames with film grain applied.
    pub film_grain: u64,
    /// Frames coded at a reduced width and upscaled (superres).
    pub superres: u64,
}

/// A frame whose tile groups are being collected.
struct Pending {
    fh: FrameHeaderObu,
    buf: Vec<u8>,
    tiles: Vec<V4l2CtrlAv1TileGroupEntry>,
}

/// AV1 [`FrameStreamParser`] over an IVF file.
pub struct Av1Parser {
    ivf: IvfReader,
    parser: Parser,
    opts: Av1Options,
    events: VecDeque<FrameEvent>,
    pending: Option<Pending>,
    seq: Option<Rc<SequenceHeaderObu>>,
    seq_obu: Option<Vec<u8>>,
    slot_ts: [u64; 8],
    slot_pic: [Option<PictureInfo>; 8],
    next_ts: u64,
    shown: i64,
    stats: Av1Stats,
}

impl std::fmt::Debug for Av1Parser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Av1Parser")
            .field("stats", &self.stats)
            .finish()
    }
}

fn bs(e: String) -> ClientError {
    ClientError::Bitstream(e)
}

/// The sequence control for a parsed sequence header.
pub fn sequence_control(s: &SequenceHeaderObu) -> V4l2CtrlAv1Sequence {
    let mut c = V4l2CtrlAv1Sequence::new_zeroed();
    let cc = &s.color_config;
    c.flags = [
        (s.still_picture, V4L2_AV1_SEQUENCE_FLAG_STILL_PICTURE),
        (
            s.use_128x128_superblock,
            V4L2_AV1_SEQUENCE_FLAG_USE_128X128_SUPERBLOCK,
        ),
        (
            s.enable_filter_intra,
            V4L2_AV1_SEQUENCE_FLAG_ENABLE_FILTER_INTRA,
        ),
        (
            s.enable_intra_edge_filter,
            V4L2_AV1_SEQUENCE_FLAG_ENABLE_INTRA_EDGE_FILTER,
        ),
        (
            s.enable_interintra_compound,
            V4L2_AV1_SEQUENCE_FLAG_ENABLE_INTERINTRA_COMPOUND,
        ),
        (
            s.enable_masked_compound,
            V4L2_AV1_SEQUENCE_FLAG_ENABLE_MASKED_COMPOUND,
        ),
        (
            s.enable_warped_motion,
            V4L2_AV1_SEQUENCE_FLAG_ENABLE_WARPED_MOTION,
        ),
        (
            s.enable_dual_filter,
            V4L2_AV1_SEQUENCE_FLAG_ENABLE_DUAL_FILTER,
        ),
        (
            s.enable_order_hint,
            V4L2_AV1_SEQUENCE_FLAG_ENABLE_ORDER_HINT,
        ),
        (s.enable_jnt_comp, V4L2_AV1_SEQUENCE_FLAG_ENABLE_JNT_COMP),
        (
            s.enable_ref_frame_mvs,
            V4L2_AV1_SEQUENCE_FLAG_ENABLE_REF_FRAME_MVS,
        ),
        (s.enable_superres, V4L2_AV1_SEQUENCE_FLAG_ENABLE_SUPERRES),
        (s.enable_cdef, V4L2_AV1_SEQUENCE_FLAG_ENABLE_CDEF),
        (
            s.enable_restoration,
            V4L2_AV1_SEQUENCE_FLAG_ENABLE_RESTORATION,
        ),
        (cc.mono_chrome, V4L2_AV1_SEQUENCE_FLAG_MONO_CHROME),
        (cc.color_range, V4L2_AV1_SEQUENCE_FLAG_COLOR_RANGE),
        (cc.subsampling_x, V4L2_AV1_SEQUENCE_FLAG_SUBSAMPLING_X),
        (cc.subsampling_y, V4L2_AV1_SEQUENCE_FLAG_SUBSAMPLING_Y),
        (
            s.film_grain_params_present,
            V4L2_AV1_SEQUENCE_FLAG_FILM_GRAIN_PARAMS_PRESENT,
        ),
        (
            cc.separate_uv_delta_q,
            V4L2_AV1_SEQUENCE_FLAG_SEPARATE_UV_DELTA_Q,
        ),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .fold(0, |acc, (_, f)| acc | f);
    c.seq_profile = s.seq_profile as u8;
    c.order_hint_bits = if s.enable_order_hint {
        s.order_hint_bits as u8
    } else {
        0
    };
    c.bit_depth = bit_depth(s);
    c.max_frame_width_minus_1 = s.max_frame_width_minus_1;
    c.max_frame_height_minus_1 = s.max_frame_height_minus_1;
    c
}

/// `BitDepth` of a sequence header, in bits.
fn bit_depth(s: &SequenceHeaderObu) -> u8 {
    match s.bit_depth {
        BitDepth::Depth8 => 8,
        BitDepth::Depth10 => 10,
        BitDepth::Depth12 => 12,
    }
}

fn flag<T: Default + std::ops::BitOr<Output = T> + Copy>(pairs: &[(bool, T)]) -> T {
    pairs
        .iter()
        .filter(|(on, _)| *on)
        .fold(T::default(), |acc, (_, f)| acc | *f)
}

/// The frame control for a parsed frame header, with the reference slot
/// timestamps.
pub fn frame_control(
    s: &SequenceHeaderObu,
    fh: &FrameHeaderObu,
    slot_ts: &[u64; 8],
) -> V4l2CtrlAv1Frame {
    let mut c = V4l2CtrlAv1Frame::new_zeroed();
    // Tile info.
    let ti = &fh.tile_info;
    let t = &mut c.tile_info;
    t.flags = flag(&[(
        ti.uniform_tile_spacing_flag,
        V4L2_AV1_TILE_INFO_FLAG_UNIFORM_TILE_SPACING,
    )]);
    t.context_update_tile_id = ti.context_update_tile_id as u8;
    t.tile_cols = ti.tile_cols as u8;
    t.tile_rows = ti.tile_rows as u8;
    let sb_shift = if s.use_128x128_superblock { 5 } else { 4 };
    let cols = (ti.tile_cols as usize).min(64);
    let rows = (ti.tile_rows as usize).min(64);
    t.mi_col_starts[..=cols].copy_from_slice(&ti.mi_col_starts[..=cols]);
    t.mi_row_starts[..=rows].copy_from_slice(&ti.mi_row_starts[..=rows]);
    let sbs = |a: u32, b: u32| (b.saturating_sub(a) + (1 << sb_shift) - 1) >> sb_shift;
    for i in 0..cols {
        t.width_in_sbs_minus_1[i] =
            sbs(ti.mi_col_starts[i], ti.mi_col_starts[i + 1]).saturating_sub(1);
    }
    for i in 0..rows {
        t.height_in_sbs_minus_1[i] =
            sbs(ti.mi_row_starts[i], ti.mi_row_starts[i + 1]).saturating_sub(1);
    }
    t.tile_size_bytes = ti.tile_size_bytes as u8;

    // Quantization.
    let q = &fh.quantization_params;
    c.quantization.flags = flag(&[
        (q.diff_uv_delta, V4L2_AV1_QUANTIZATION_FLAG_DIFF_UV_DELTA),
        (q.using_qmatrix, V4L2_AV1_QUANTIZATION_FLAG_USING_QMATRIX),
        (
            q.delta_q_present,
            V4L2_AV1_QUANTIZATION_FLAG_DELTA_Q_PRESENT,
        ),
    ]);
    c.quantization.base_q_idx = q.base_q_idx as u8;
    c.quantization.delta_q_y_dc = q.delta_q_y_dc as i8;
    c.quantization.delta_q_u_dc = q.delta_q_u_dc as i8;
    c.quantization.delta_q_u_ac = q.delta_q_u_ac as i8;
    c.quantization.delta_q_v_dc = q.delta_q_v_dc as i8;
    c.quantization.delta_q_v_ac = q.delta_q_v_ac as i8;
    c.quantization.qm_y = q.qm_y as u8;
    c.quantization.qm_u = q.qm_u as u8;
    c.quantization.qm_v = q.qm_v as u8;
    c.quantization.delta_q_res = q.delta_q_res as u8;
    c.superres_denom = fh.superres_denom as u8;

    // Segmentation.
    let sp = &fh.segmentation_params;
    c.segmentation.flags = flag(&[
        (sp.segmentation_enabled, V4L2_AV1_SEGMENTATION_FLAG_ENABLED),
        (
            sp.segmentation_update_map,
            V4L2_AV1_SEGMENTATION_FLAG_UPDATE_MAP,
        ),
        (
            sp.segmentation_temporal_update,
            V4L2_AV1_SEGMENTATION_FLAG_TEMPORAL_UPDATE,
        ),
        (
            sp.segmentation_update_data,
            V4L2_AV1_SEGMENTATION_FLAG_UPDATE_DATA,
        ),
        (
            sp.seg_id_pre_skip,
            V4L2_AV1_SEGMENTATION_FLAG_SEG_ID_PRE_SKIP,
        ),
    ]);
    c.segmentation.last_active_seg_id = sp.last_active_seg_id;
    for i in 0..8 {
        c.segmentation.feature_enabled[i] = sp.feature_enabled[i]
            .iter()
            .enumerate()
            .fold(0u8, |acc, (j, on)| acc | (u8::from(*on) << j));
        c.segmentation.feature_data[i] = sp.feature_data[i];
    }

    // Loop filter.
    let lf = &fh.loop_filter_params;
    c.loop_filter.flags = flag(&[
        (
            lf.loop_filter_delta_enabled,
            V4L2_AV1_LOOP_FILTER_FLAG_DELTA_ENABLED,
        ),
        (
            lf.loop_filter_delta_update,
            V4L2_AV1_LOOP_FILTER_FLAG_DELTA_UPDATE,
        ),
        (
            lf.delta_lf_present,
            V4L2_AV1_LOOP_FILTER_FLAG_DELTA_LF_PRESENT,
        ),
        (lf.delta_lf_multi, V4L2_AV1_LOOP_FILTER_FLAG_DELTA_LF_MULTI),
    ]);
    c.loop_filter.level = lf.loop_filter_level;
    c.loop_filter.sharpness = lf.loop_filter_sharpness;
    c.loop_filter.ref_deltas = lf.loop_filter_ref_deltas;
    c.loop_filter.mode_deltas = lf.loop_filter_mode_deltas;
    c.loop_filter.delta_lf_res = lf.delta_lf_res;

    // CDEF.
    let cd = &fh.cdef_params;
    c.cdef.damping_minus_3 = cd.cdef_damping.saturating_sub(3) as u8;
    c.cdef.bits = cd.cdef_bits as u8;
    for i in 0..8 {
        c.cdef.y_pri_strength[i] = cd.cdef_y_pri_strength[i] as u8;
        c.cdef.y_sec_strength[i] = cd.cdef_y_sec_strength[i] as u8;
        c.cdef.uv_pri_strength[i] = cd.cdef_uv_pri_strength[i] as u8;
        c.cdef.uv_sec_strength[i] = cd.cdef_uv_sec_strength[i] as u8;
    }
    c.skip_mode_frame = [fh.skip_mode_frame[0] as u8, fh.skip_mode_frame[1] as u8];
    c.primary_ref_frame = fh.primary_ref_frame as u8;

    // Loop restoration.
    let lr = &fh.loop_restoration_params;
    c.loop_restoration.flags = flag(&[
        (lr.uses_lr, V4L2_AV1_LOOP_RESTORATION_FLAG_USES_LR),
        (
            lr.uses_chroma_lr,
            V4L2_AV1_LOOP_RESTORATION_FLAG_USES_CHROMA_LR,
        ),
    ]);
    c.loop_restoration.lr_unit_shift = lr.lr_unit_shift;
    c.loop_restoration.lr_uv_shift = lr.lr_uv_shift;
    for i in 0..3 {
        c.loop_restoration.frame_restoration_type[i] = lr.frame_restoration_type[i] as u32;
        c.loop_restoration.loop_restoration_size[i] = u32::from(lr.loop_restoration_size[i]);
    }

    // Global motion (index = reference frame type; 0, intra, unused).
    let gm = &fh.global_motion_params;
    for i in 0..8 {
        c.global_motion.flags[i] = flag(&[
            (gm.is_global[i], V4L2_AV1_GLOBAL_MOTION_FLAG_IS_GLOBAL),
            (gm.is_rot_zoom[i], V4L2_AV1_GLOBAL_MOTION_FLAG_IS_ROT_ZOOM),
            (
                gm.is_translation[i],
                V4L2_AV1_GLOBAL_MOTION_FLAG_IS_TRANSLATION,
            ),
        ]);
        c.global_motion.r#type[i] = gm.gm_type[i] as u32;
        c.global_motion.params[i] = gm.gm_params[i];
        if i > 0 && gm.is_global[i] && !gm.warp_valid[i] {
            c.global_motion.invalid |= 1 << i;
        }
    }

    c.flags = flag(&[
        (fh.show_frame, V4L2_AV1_FRAME_FLAG_SHOW_FRAME),
        (fh.showable_frame, V4L2_AV1_FRAME_FLAG_SHOWABLE_FRAME),
        (
            fh.error_resilient_mode,
            V4L2_AV1_FRAME_FLAG_ERROR_RESILIENT_MODE,
        ),
        (
            fh.disable_cdf_update,
            V4L2_AV1_FRAME_FLAG_DISABLE_CDF_UPDATE,
        ),
        (
            fh.allow_screen_content_tools != 0,
            V4L2_AV1_FRAME_FLAG_ALLOW_SCREEN_CONTENT_TOOLS,
        ),
        (
            fh.force_integer_mv != 0,
            V4L2_AV1_FRAME_FLAG_FORCE_INTEGER_MV,
        ),
        (fh.allow_intrabc, V4L2_AV1_FRAME_FLAG_ALLOW_INTRABC),
        (fh.use_superres, V4L2_AV1_FRAME_FLAG_USE_SUPERRES),
        (
            fh.allow_high_precision_mv,
            V4L2_AV1_FRAME_FLAG_ALLOW_HIGH_PRECISION_MV,
        ),
        (
            fh.is_motion_mode_switchable,
            V4L2_AV1_FRAME_FLAG_IS_MOTION_MODE_SWITCHABLE,
        ),
        (fh.use_ref_frame_mvs, V4L2_AV1_FRAME_FLAG_USE_REF_FRAME_MVS),
        (
            fh.disable_frame_end_update_cdf,
            V4L2_AV1_FRAME_FLAG_DISABLE_FRAME_END_UPDATE_CDF,
        ),
        (
            fh.allow_warped_motion,
            V4L2_AV1_FRAME_FLAG_ALLOW_WARPED_MOTION,
        ),
        (fh.reference_select, V4L2_AV1_FRAME_FLAG_REFERENCE_SELECT),
        (fh.reduced_tx_set, V4L2_AV1_FRAME_FLAG_REDUCED_TX_SET),
        (
            fh.skip_mode_frame[0] != 0,
            V4L2_AV1_FRAME_FLAG_SKIP_MODE_ALLOWED,
        ),
        (fh.skip_mode_present, V4L2_AV1_FRAME_FLAG_SKIP_MODE_PRESENT),
        (
            fh.frame_size_override_flag,
            V4L2_AV1_FRAME_FLAG_FRAME_SIZE_OVERRIDE,
        ),
        (
            fh.buffer_removal_time_present_flag,
            V4L2_AV1_FRAME_FLAG_BUFFER_REMOVAL_TIME_PRESENT,
        ),
        (
            fh.frame_refs_short_signaling,
            V4L2_AV1_FRAME_FLAG_FRAME_REFS_SHORT_SIGNALING,
        ),
    ]);
    c.frame_type = fh.frame_type as u32;
    c.order_hint = fh.order_hint;
    c.upscaled_width = fh.upscaled_width;
    c.interpolation_filter = fh.interpolation_filter as u32;
    c.tx_mode = fh.tx_mode as u32;
    c.frame_width_minus_1 = fh.frame_width.saturating_sub(1);
    c.frame_height_minus_1 = fh.frame_height.saturating_sub(1);
    c.render_width_minus_1 = fh.render_width.saturating_sub(1) as u16;
    c.render_height_minus_1 = fh.render_height.saturating_sub(1) as u16;
    c.current_frame_id = fh.current_frame_id;
    for (d, v) in c
        .buffer_removal_time
        .iter_mut()
        .zip(&fh.buffer_removal_time)
    {
        *d = *v;
    }
    c.order_hints = fh.order_hints;
    c.reference_frame_ts = *slot_ts;
    if !fh.frame_is_intra {
        for i in 0..7 {
            c.ref_frame_idx[i] = fh.ref_frame_idx[i] as i8;
        }
    }
    c.refresh_frame_flags = fh.refresh_frame_flags as u8;
    c
}

/// The film grain control of a frame header.
pub fn film_grain_control(fh: &FrameHeaderObu) -> V4l2CtrlAv1FilmGrain {
    let g = &fh.film_grain_params;
    let mut c = V4l2CtrlAv1FilmGrain::new_zeroed();
    if !g.apply_grain {
        return c;
    }
    c.flags = flag(&[
        (g.apply_grain, V4L2_AV1_FILM_GRAIN_FLAG_APPLY_GRAIN),
        (g.update_grain, V4L2_AV1_FILM_GRAIN_FLAG_UPDATE_GRAIN),
        (
            g.chroma_scaling_from_luma,
            V4L2_AV1_FILM_GRAIN_FLAG_CHROMA_SCALING_FROM_LUMA,
        ),
        (g.overlap_flag, V4L2_AV1_FILM_GRAIN_FLAG_OVERLAP),
        (
            g.clip_to_restricted_range,
            V4L2_AV1_FILM_GRAIN_FLAG_CLIP_TO_RESTRICTED_RANGE,
        ),
    ]);
    c.cr_mult = g.cr_mult;
    c.grain_seed = g.grain_seed;
    c.film_grain_params_ref_idx = g.film_grain_params_ref_idx;
    c.num_y_points = g.num_y_points;
    c.point_y_value = g.point_y_value;
    c.point_y_scaling = g.point_y_scaling;
    c.num_cb_points = g.num_cb_points;
    c.point_cb_value = g.point_cb_value;
    c.point_cb_scaling = g.point_cb_scaling;
    c.num_cr_points = g.num_cr_points;
    c.point_cr_value = g.point_cr_value;
    c.point_cr_scaling = g.point_cr_scaling;
    c.grain_scaling_minus_8 = g.grain_scaling_minus_8;
    c.ar_coeff_lag = g.ar_coeff_lag as u8;
    c.ar_coeffs_y_plus_128 = g.ar_coeffs_y_plus_128;
    c.ar_coeffs_cb_plus_128 = g.ar_coeffs_cb_plus_128;
    c.ar_coeffs_cr_plus_128 = g.ar_coeffs_cr_plus_128;
    c.ar_coeff_shift_minus_6 = g.ar_coeff_shift_minus_6;
    c.grain_scale_shift = g.grain_scale_shift;
    c.cb_mult = g.cb_mult;
    c.cb_luma_mult = g.cb_luma_mult;
    c.cr_luma_mult = g.cr_luma_mult;
    c.cb_offset = g.cb_offset;
    c.cr_offset = g.cr_offset;
    c
}

impl Av1Parser {
    /// A parser over an IVF file's bytes.
    pub fn new(ivf: Vec<u8>, opts: Av1Options) -> Result<Self, ClientError> {
        let ivf = IvfReader::new(ivf)?;
        if &ivf.header().fourcc != b"AV01" {
            return Err(ClientError::Unsupported(format!(
                "IVF fourcc {:?} is not AV01",
                String::from_utf8_lossy(&ivf.header().fourcc)
            )));
        }
        Ok(Self {
            ivf,
            parser: Parser::default(),
            opts,
            events: VecDeque::new(),
            pending: None,
            seq: None,
            seq_obu: None,
            slot_ts: [0; 8],
            slot_pic: [None; 8],
            next_ts: TIMESTAMP_STEP,
            shown: 0,
            stats: Av1Stats::default(),
        })
    }

    /// What the parser met so far.
    pub fn stats(&self) -> Av1Stats {
        self.stats
    }

    fn display_key(&mut self) -> DisplayKey {
        self.shown += 1;
        DisplayKey {
            epoch: 0,
            order: self.shown,
        }
    }

    /// Parses one temporal unit (IVF frame) into events.
    fn parse_tu(&mut self, tu: &[u8]) -> Result<(), ClientError> {
        let mut pos = 0;
        while pos < tu.len() {
            let obu = match self.parser.read_obu(&tu[pos..]).map_err(bs)? {
                ObuAction::Drop(n) => {
                    pos += n as usize;
                    continue;
                }
                ObuAction::Process(obu) => obu,
            };
            let start = pos;
            let used = obu.bytes_used;
            let payload_len = obu.as_ref().len();
            let raw = &tu[start..start + used];
            let hdr_len = used - payload_len;
            pos += used;
            let ty = obu.header.obu_type;
            if matches!(ty, ObuType::TileList) {
                return Err(ClientError::Unsupported("large scale tile lists".into()));
            }
            match self.parser.parse_obu(obu).map_err(bs)? {
                ParsedObu::SequenceHeader(s) => {
                    if s.operating_points_cnt_minus_1 > 0 {
                        return Err(ClientError::Unsupported(
                            "scalable streams (several operating points)".into(),
                        ));
                    }
                    self.seq = Some(s);
                    self.seq_obu = Some(raw.to_vec());
                }
                ParsedObu::FrameHeader(fh) => {
                    if fh.show_existing_frame {
                        self.show_existing(&fh)?;
                    } else {
                        let mut buf = Vec::new();
                        buf.extend_from_slice(raw);
                        self.pending = Some(Pending {
                            fh,
                            buf,
                            tiles: Vec::new(),
                        });
                    }
                }
                ParsedObu::Frame(fo) => {
                    let base = hdr_len + fo.header.header_bytes;
                    let mut p = Pending {
                        fh: fo.header,
                        buf: Vec::new(),
                        tiles: Vec::new(),
                    };
                    let tg = fo.tile_group;
                    Self::add_tiles(&mut p, raw, base, &tg.tiles);
                    self.pending = Some(p);
                    if tg.tg_end + 1 == self.tile_count() {
                        self.finish_frame()?;
                    }
                }
                ParsedObu::TileGroup(tg) => {
                    let Some(p) = self.pending.as_mut() else {
                        return Err(bs("tile group without a frame header".into()));
                    };
                    Self::add_tiles(p, raw, hdr_len, &tg.tiles);
                    if tg.tg_end + 1 == self.tile_count() {
                        self.finish_frame()?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn tile_count(&self) -> u32 {
        self.pending
            .as_ref()
            .map(|p| p.fh.tile_info.tile_cols * p.fh.tile_info.tile_rows)
            .unwrap_or(1)
    }

    /// Appends one OBU (`raw`, whose tile offsets count from `base`) to the
    /// frame's buffer.
    fn add_tiles(
        p: &mut Pending,
        raw: &[u8],
        base: usize,
        tiles: &[cros_codecs::codec::av1::parser::Tile],
    ) {
        let at = p.buf.len() + base;
        p.buf.extend_from_slice(raw);
        for t in tiles {
            p.tiles.push(V4l2CtrlAv1TileGroupEntry {
                tile_offset: (at + t.tile_offset as usize) as u32,
                tile_size: t.tile_size,
                tile_row: t.tile_row,
                tile_col: t.tile_col,
            });
        }
    }

    fn picture_info(&self, fh: &FrameHeaderObu) -> PictureInfo {
        let (w, h) = (fh.upscaled_width, fh.frame_height);
        let bit_depth = self.seq.as_deref().map(bit_depth).unwrap_or(8);
        // Frames of a sequence may differ in size (frame_size_override,
        // reference scaling) without a key frame: the CAPTURE buffers must
        // hold the sequence's largest frame.
        let (mw, mh) = self.seq.as_deref().map_or((w, h), |s| {
            (
                (s.max_frame_width_minus_1 as u32 + 1).max(w),
                (s.max_frame_height_minus_1 as u32 + 1).max(h),
            )
        });
        PictureInfo {
            key: DisplayKey { epoch: 0, order: 0 },
            max_reorder: 0,
            visible: (0, 0, w, h),
            coded: (mw.next_multiple_of(16), mh.next_multiple_of(16)),
            bit_depth,
        }
    }

    fn show_existing(&mut self, fh: &FrameHeaderObu) -> Result<(), ClientError> {
        let idx = usize::from(fh.frame_to_show_map_idx) & 7;
        let Some(mut pic) = self.slot_pic[idx] else {
            return Err(bs(format!("show_existing_frame of empty slot {idx}")));
        };
        let ts = self.slot_ts[idx];
        pic.key = self.display_key();
        self.stats.show_existing += 1;
        self.events.push_back(FrameEvent::ShowExisting {
            timestamp: ts,
            picture: pic,
        });
        if fh.frame_type == FrameType::KeyFrame {
            // Reference refresh with the shown key frame (7.21).
            self.slot_ts = [ts; 8];
            self.slot_pic = [Some(pic); 8];
            self.parser.ref_frame_update(fh).map_err(bs)?;
        }
        Ok(())
    }

    fn finish_frame(&mut self) -> Result<(), ClientError> {
        let Some(p) = self.pending.take() else {
            return Ok(());
        };
        let Some(seq) = self.seq.clone() else {
            return Err(bs("frame before any sequence header".into()));
        };
        let fh = &p.fh;
        let ts = self.next_ts;
        self.next_ts += TIMESTAMP_STEP;

        let mut controls = ControlValues::new();
        controls.set(&sequence_control(&seq));
        controls.set(&frame_control(&seq, fh, &self.slot_ts));
        controls.set(&film_grain_control(fh));
        let mut entries = Vec::new();
        for e in &p.tiles {
            entries.extend_from_slice(e.as_bytes());
        }
        controls.set_raw(V4l2CtrlAv1TileGroupEntry::ID, entries);

        let mut bitstream = Vec::new();
        if self.opts.include_sequence_header {
            if let Some(s) = self.seq_obu.take() {
                bitstream.extend_from_slice(&s);
            }
        }
        let shift = bitstream.len() as u32;
        bitstream.extend_from_slice(&p.buf);
        if shift > 0 {
            let mut entries = Vec::new();
            for e in &p.tiles {
                let mut e = *e;
                e.tile_offset += shift;
                entries.extend_from_slice(e.as_bytes());
            }
            controls.set_raw(V4l2CtrlAv1TileGroupEntry::ID, entries);
        }

        let mut pic = self.picture_info(fh);
        if fh.show_frame {
            pic.key = self.display_key();
        } else {
            self.stats.hidden += 1;
        }
        self.stats.frames += 1;
        if fh.frame_type == FrameType::KeyFrame {
            self.stats.key_frames += 1;
        }
        if fh.film_grain_params.apply_grain {
            self.stats.film_grain += 1;
        }
        if fh.use_superres {
            self.stats.superres += 1;
        }
        self.stats.max_tiles = self
            .stats
            .max_tiles
            .max(fh.tile_info.tile_cols * fh.tile_info.tile_rows);
        for i in 0..8 {
            if fh.refresh_frame_flags & (1 << i) != 0 {
                self.slot_ts[i] = ts;
                self.slot_pic[i] = Some(pic);
            }
        }
        self.parser.ref_frame_update(fh).map_err(bs)?;
        let job = Job {
            codec: Codec::Av1,
            controls,
            bitstream,
            timestamp: ts,
            flags: JobFlags::default(),
            picture: pic,
        };
        self.events.push_back(FrameEvent::Decode {
            job: Box::new(job),
            shown: fh.show_frame,
            slots: self.slot_ts.to_vec(),
        });
        Ok(())
    }
}

impl FrameStreamParser for Av1Parser {
    fn next_event(&mut self) -> Result<Option<FrameEvent>, ClientError> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(Some(e));
            }
            let Some((_, tu)) = self.ivf.next_frame()? else {
                return Ok(None);
            };
            let tu = tu.to_vec();
            self.parse_tu(&tu)?;
        }
    }
}

impl StreamParser for Av1Parser {
    fn next_job(&mut self) -> Result<Option<Job>, ClientError> {
        next_job_of(self)
    }
}
