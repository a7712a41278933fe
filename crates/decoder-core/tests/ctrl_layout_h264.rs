//! Layout truth for the H.264 stateless controls: compiles a C program against
//! the Linux 6.12 uAPI headers printing `sizeof`/`offsetof` of every field of
//! every H.264 control struct and the value of every H.264 constant, and
//! compares each line with what the Rust declarations give.
//!
//! One macro-declared list (`h264_layout!`) generates both the C program and
//! the Rust side, so a field cannot be checked on one side only.
//!
//! Include root: `$DAEDALUS_UAPI_INCLUDE`, else `<workspace>/.cache/uapi/usr/include`
//! (created by `scripts/uapi-headers.sh`). Missing headers fail the test.

use std::path::{Path, PathBuf};
use std::process::Command;

use decoder_core::ctrl::h264::*;
use decoder_core::ctrl::ControlValues;

fn field_size<T, F>(_: fn(&T) -> &F) -> usize {
    core::mem::size_of::<F>()
}

macro_rules! h264_layout {
    (
        structs { $( $rs:ident = $cs:ident { $( $f:ident ),* $(,)? } )* }
        consts { $( $k:ident ),* $(,)? }
    ) => {
        /// (C program body, expected output lines)
        fn both_sides() -> (String, Vec<String>) {
            let mut c = String::new();
            let mut want = Vec::new();
            $(
                c += &format!("S({})\n", stringify!($cs));
                want.push(format!(
                    "struct {} {} {}",
                    stringify!($cs),
                    core::mem::size_of::<$rs>(),
                    core::mem::align_of::<$rs>()
                ));
                $(
                    c += &format!("F({}, {})\n", stringify!($cs), stringify!($f));
                    want.push(format!(
                        "field {}.{} {} {}",
                        stringify!($cs),
                        stringify!($f),
                        core::mem::offset_of!($rs, $f),
                        field_size::<$rs, _>(|s| &s.$f)
                    ));
                )*
            )*
            $(
                c += &format!("K({})\n", stringify!($k));
                want.push(format!("const {} {}", stringify!($k), ($k) as i64));
            )*
            (c, want)
        }
    };
}

h264_layout! {
    structs {
        V4l2CtrlH264Sps = v4l2_ctrl_h264_sps {
            profile_idc, constraint_set_flags, level_idc, seq_parameter_set_id,
            chroma_format_idc, bit_depth_luma_minus8, bit_depth_chroma_minus8,
            log2_max_frame_num_minus4, pic_order_cnt_type, log2_max_pic_order_cnt_lsb_minus4,
            max_num_ref_frames, num_ref_frames_in_pic_order_cnt_cycle, offset_for_ref_frame,
            offset_for_non_ref_pic, offset_for_top_to_bottom_field, pic_width_in_mbs_minus1,
            pic_height_in_map_units_minus1, flags,
        }
        V4l2CtrlH264Pps = v4l2_ctrl_h264_pps {
            pic_parameter_set_id, seq_parameter_set_id, num_slice_groups_minus1,
            num_ref_idx_l0_default_active_minus1, num_ref_idx_l1_default_active_minus1,
            weighted_bipred_idc, pic_init_qp_minus26, pic_init_qs_minus26,
            chroma_qp_index_offset, second_chroma_qp_index_offset, flags,
        }
        V4l2CtrlH264ScalingMatrix = v4l2_ctrl_h264_scaling_matrix {
            scaling_list_4x4, scaling_list_8x8,
        }
        V4l2H264WeightFactors = v4l2_h264_weight_factors {
            luma_weight, luma_offset, chroma_weight, chroma_offset,
        }
        V4l2CtrlH264PredWeights = v4l2_ctrl_h264_pred_weights {
            luma_log2_weight_denom, chroma_log2_weight_denom, weight_factors,
        }
        V4l2H264Reference = v4l2_h264_reference { fields, index }
        V4l2CtrlH264SliceParams = v4l2_ctrl_h264_slice_params {
            header_bit_size, first_mb_in_slice, slice_type, colour_plane_id,
            redundant_pic_cnt, cabac_init_idc, slice_qp_delta, slice_qs_delta,
            disable_deblocking_filter_idc, slice_alpha_c0_offset_div2, slice_beta_offset_div2,
            num_ref_idx_l0_active_minus1, num_ref_idx_l1_active_minus1, reserved,
            ref_pic_list0, ref_pic_list1, flags,
        }
        V4l2H264DpbEntry = v4l2_h264_dpb_entry {
            reference_ts, pic_num, frame_num, fields, reserved, top_field_order_cnt,
            bottom_field_order_cnt, flags,
        }
        V4l2CtrlH264DecodeParams = v4l2_ctrl_h264_decode_params {
            dpb, nal_ref_idc, frame_num, top_field_order_cnt, bottom_field_order_cnt,
            idr_pic_id, pic_order_cnt_lsb, delta_pic_order_cnt_bottom, delta_pic_order_cnt0,
            delta_pic_order_cnt1, dec_ref_pic_marking_bit_size, pic_order_cnt_bit_size,
            slice_group_change_cycle, reserved, flags,
        }
    }
    consts {
        V4L2_CID_STATELESS_H264_DECODE_MODE, V4L2_CID_STATELESS_H264_START_CODE,
        V4L2_CID_STATELESS_H264_SPS, V4L2_CID_STATELESS_H264_PPS,
        V4L2_CID_STATELESS_H264_SCALING_MATRIX, V4L2_CID_STATELESS_H264_PRED_WEIGHTS,
        V4L2_CID_STATELESS_H264_SLICE_PARAMS, V4L2_CID_STATELESS_H264_DECODE_PARAMS,
        V4L2_H264_SPS_CONSTRAINT_SET0_FLAG, V4L2_H264_SPS_CONSTRAINT_SET1_FLAG,
        V4L2_H264_SPS_CONSTRAINT_SET2_FLAG, V4L2_H264_SPS_CONSTRAINT_SET3_FLAG,
        V4L2_H264_SPS_CONSTRAINT_SET4_FLAG, V4L2_H264_SPS_CONSTRAINT_SET5_FLAG,
        V4L2_H264_SPS_FLAG_SEPARATE_COLOUR_PLANE, V4L2_H264_SPS_FLAG_QPPRIME_Y_ZERO_TRANSFORM_BYPASS,
        V4L2_H264_SPS_FLAG_DELTA_PIC_ORDER_ALWAYS_ZERO,
        V4L2_H264_SPS_FLAG_GAPS_IN_FRAME_NUM_VALUE_ALLOWED, V4L2_H264_SPS_FLAG_FRAME_MBS_ONLY,
        V4L2_H264_SPS_FLAG_MB_ADAPTIVE_FRAME_FIELD, V4L2_H264_SPS_FLAG_DIRECT_8X8_INFERENCE,
        V4L2_H264_PPS_FLAG_ENTROPY_CODING_MODE,
        V4L2_H264_PPS_FLAG_BOTTOM_FIELD_PIC_ORDER_IN_FRAME_PRESENT,
        V4L2_H264_PPS_FLAG_WEIGHTED_PRED, V4L2_H264_PPS_FLAG_DEBLOCKING_FILTER_CONTROL_PRESENT,
        V4L2_H264_PPS_FLAG_CONSTRAINED_INTRA_PRED, V4L2_H264_PPS_FLAG_REDUNDANT_PIC_CNT_PRESENT,
        V4L2_H264_PPS_FLAG_TRANSFORM_8X8_MODE, V4L2_H264_PPS_FLAG_SCALING_MATRIX_PRESENT,
        V4L2_H264_SLICE_TYPE_P, V4L2_H264_SLICE_TYPE_B, V4L2_H264_SLICE_TYPE_I,
        V4L2_H264_SLICE_TYPE_SP, V4L2_H264_SLICE_TYPE_SI,
        V4L2_H264_SLICE_FLAG_DIRECT_SPATIAL_MV_PRED, V4L2_H264_SLICE_FLAG_SP_FOR_SWITCH,
        V4L2_H264_TOP_FIELD_REF, V4L2_H264_BOTTOM_FIELD_REF, V4L2_H264_FRAME_REF,
        V4L2_H264_NUM_DPB_ENTRIES, V4L2_H264_REF_LIST_LEN,
        V4L2_H264_DPB_ENTRY_FLAG_VALID, V4L2_H264_DPB_ENTRY_FLAG_ACTIVE,
        V4L2_H264_DPB_ENTRY_FLAG_LONG_TERM, V4L2_H264_DPB_ENTRY_FLAG_FIELD,
        V4L2_H264_DECODE_PARAM_FLAG_IDR_PIC, V4L2_H264_DECODE_PARAM_FLAG_FIELD_PIC,
        V4L2_H264_DECODE_PARAM_FLAG_BOTTOM_FIELD, V4L2_H264_DECODE_PARAM_FLAG_PFRAME,
        V4L2_H264_DECODE_PARAM_FLAG_BFRAME,
    }
}

fn include_root() -> PathBuf {
    let p = match std::env::var_os("DAEDALUS_UAPI_INCLUDE") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/uapi/usr/include"),
    };
    assert!(
        p.join("linux/v4l2-controls.h").is_file(),
        "Linux 6.12 uAPI headers not found under {}: run scripts/uapi-headers.sh \
         (or set DAEDALUS_UAPI_INCLUDE to an include root holding linux/v4l2-controls.h)",
        p.display()
    );
    p
}

#[test]
fn h264_layout_matches_linux_6_12_uapi() {
    let inc = include_root();
    let (body, want) = both_sides();
    let src = format!(
        "#include <stdio.h>\n#include <stddef.h>\n#include <linux/videodev2.h>\n\
         #include <linux/v4l2-controls.h>\n\
         #define S(t) printf(\"struct %s %zu %zu\\n\", #t, sizeof(struct t), _Alignof(struct t));\n\
         #define F(t, f) printf(\"field %s.%s %zu %zu\\n\", #t, #f, offsetof(struct t, f), \
         sizeof(((struct t *)0)->f));\n\
         #define K(n) printf(\"const %s %lld\\n\", #n, (long long)(n));\n\
         int main(void) {{\n{body}return 0;\n}}\n"
    );
    let dir = std::env::temp_dir().join(format!("daedalus-h264-layout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let c = dir.join("layout.c");
    let exe = dir.join("layout");
    std::fs::write(&c, src).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .arg("-std=gnu11")
        .arg("-I")
        .arg(&inc)
        .arg(&c)
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cc}: {e}"));
    assert!(
        out.status.success(),
        "C compile failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&exe).output().unwrap();
    assert!(run.status.success());
    let got: Vec<String> = String::from_utf8(run.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    std::fs::remove_dir_all(&dir).ok();
    let mut mismatches = 0;
    for (g, w) in got.iter().zip(&want) {
        if g != w {
            eprintln!("C: {g}\nRust: {w}");
            mismatches += 1;
        }
    }
    assert_eq!(got.len(), want.len());
    assert_eq!(mismatches, 0, "{mismatches} layout mismatches");
    eprintln!("{} layout lines identical", want.len());
}

#[test]
fn every_declared_control_has_a_default() {
    // Control family sanity beyond layout: every control exists with a payload
    // of the struct's size.
    let v = ControlValues::defaults(decoder_core::ctrl::Codec::H264);
    assert_eq!(v.len(), 8);
    assert_eq!(
        v.get_raw(V4L2_CID_STATELESS_H264_DECODE_PARAMS)
            .unwrap()
            .len(),
        core::mem::size_of::<V4l2CtrlH264DecodeParams>()
    );
}
