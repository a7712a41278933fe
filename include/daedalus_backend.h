/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * daedalus-v4l2 decoder plugin ABI.
 *
 * A plugin is a shared library that the decoding daemon loads with dlopen()
 * to decode the jobs of V4L2 stateless decoding contexts: one job is the
 * codec controls and bitstream of one OUTPUT buffer, decoded into the
 * CAPTURE buffer of the job. The library exports one function,
 * daedalus_backend_entry(), which returns a descriptor holding the ABI
 * version, the codecs the plugin decodes and the session functions.
 *
 * docs/backend-abi.md is the full contract (pointer lifetimes, threading,
 * error codes, versioning). The Rust twin of this header is
 * crates/daemon/src/backend/plugin.rs; crates/daemon/tests/plugin_abi.rs
 * fails when the two differ in any struct size, field offset, field size or
 * constant.
 *
 * Only fixed-width integer types and pointers are used; every field is
 * naturally aligned and no struct has implicit padding on LP64 targets.
 */
#ifndef DAEDALUS_BACKEND_H
#define DAEDALUS_BACKEND_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ABI version: the major changes on any incompatible change, the minor when
 * fields are appended to the end of a struct (see docs/backend-abi.md). */
#define DAEDALUS_BACKEND_ABI_MAJOR	1
#define DAEDALUS_BACKEND_ABI_MINOR	0

/* Name of the exported entry point. */
#define DAEDALUS_BACKEND_ENTRY_SYMBOL	"daedalus_backend_entry"

/* Codec numbers (the daemon's protocol numbering). Bit (1 << n) of
 * struct daedalus_backend.codecs announces codec n. */
#define DAEDALUS_CODEC_H264		1	/* V4L2_PIX_FMT_H264_SLICE */
#define DAEDALUS_CODEC_HEVC		2	/* V4L2_PIX_FMT_HEVC_SLICE */
#define DAEDALUS_CODEC_VP8		3	/* V4L2_PIX_FMT_VP8_FRAME */
#define DAEDALUS_CODEC_VP9		4	/* V4L2_PIX_FMT_VP9_FRAME */
#define DAEDALUS_CODEC_AV1		5	/* V4L2_PIX_FMT_AV1_FRAME */
#define DAEDALUS_CODEC_BIT(codec)	(1u << (codec))

/* Decoded pixel layouts (V4L2 fourccs). Both are 4:2:0 with a luma plane
 * followed by an interleaved CbCr plane; P010 stores each sample in a
 * little-endian 16-bit word, value in the 10 most significant bits. */
#define DAEDALUS_FOURCC_NV12		0x3231564eu	/* 'N' 'V' '1' '2' */
#define DAEDALUS_FOURCC_P010		0x30313050u	/* 'P' '0' '1' '0' */

/* Most image planes of a capture buffer. */
#define DAEDALUS_MAX_PLANES		4

/* Size of struct daedalus_decode_result.message, NUL included. */
#define DAEDALUS_MESSAGE_SIZE		128

/* Return values of decode(). Errors are negative Linux errno values. */
#define DAEDALUS_DECODED		0	/* picture complete in the planes */
#define DAEDALUS_HELD			1	/* slice kept, planes untouched */
#define DAEDALUS_NEED_KEYFRAME		2	/* skipped: waiting for a key frame */

/* struct daedalus_job.flags */
#define DAEDALUS_JOB_MORE_SLICES	(1u << 0)	/* more slices of this picture follow */
#define DAEDALUS_JOB_CONTINUES_PICTURE	(1u << 1)	/* continues the held picture */

/* struct daedalus_reference.flags */
#define DAEDALUS_REF_DECODED		(1u << 0)	/* decoded by this session since its last reset */

/* struct daedalus_decode_result.flags */
#define DAEDALUS_RESULT_KEYFRAME	(1u << 0)	/* the picture was a key frame */

/* A decoding session, defined by the plugin. */
struct daedalus_session;

/* Parameters of a new session; valid during create() only. */
struct daedalus_session_params {
	uint32_t struct_size;	/* sizeof as the host knows it */
	uint32_t codec;		/* DAEDALUS_CODEC_* */
	uint32_t width;		/* coded width in pixels */
	uint32_t height;	/* coded height in pixels */
	uint32_t fourcc;	/* DAEDALUS_FOURCC_* of the capture buffers */
	uint32_t num_planes;	/* image planes of the capture buffers (2) */
	uint32_t stride[DAEDALUS_MAX_PLANES];	/* bytes per row of each plane */
};

/* One codec control of a job: the V4L2 control id and its payload in the
 * Linux uAPI layout (4-byte int32 for integer and menu controls, the
 * struct or array of structs for compound controls). */
struct daedalus_control {
	uint32_t id;		/* V4L2_CID_* */
	uint32_t size;		/* payload bytes */
	const void *data;	/* payload; valid during decode() only */
};

/* A reference picture the job's controls name, by capture timestamp. */
struct daedalus_reference {
	uint64_t timestamp;	/* ns, as in the controls */
	uint32_t flags;		/* DAEDALUS_REF_* */
	uint32_t reserved;	/* zero */
};

/* One decoding job (one OUTPUT buffer); valid during decode() only. */
struct daedalus_job {
	uint32_t struct_size;	/* sizeof as the host knows it */
	uint32_t codec;		/* DAEDALUS_CODEC_* (the session's codec) */
	uint64_t timestamp;	/* ns; names the decoded picture */
	uint32_t flags;		/* DAEDALUS_JOB_* */
	uint32_t num_controls;
	const struct daedalus_control *controls;	/* ascending id order */
	const uint8_t *bitstream;
	uint64_t bitstream_len;
	const struct daedalus_reference *references;
	uint32_t num_references;
	uint32_t reserved;	/* zero */
};

/* One writable image plane of the capture buffer. */
struct daedalus_plane {
	uint64_t length;	/* writable bytes at data */
	uint8_t *data;		/* valid during decode() only */
	uint32_t stride;	/* bytes per row */
	uint32_t reserved;	/* zero */
};

/* The capture buffer of a job; valid during decode() only. */
struct daedalus_capture {
	uint32_t struct_size;	/* sizeof as the host knows it */
	uint32_t fourcc;	/* DAEDALUS_FOURCC_* */
	uint32_t width;		/* pixels to write per row */
	uint32_t height;	/* luma rows to write */
	uint32_t num_planes;	/* used entries of planes[]: 2 (Y, CbCr) */
	uint32_t reserved;	/* zero */
	struct daedalus_plane planes[DAEDALUS_MAX_PLANES];
};

/* What decode() reports besides its return value. The host zeroes it and
 * sets struct_size before the call. */
struct daedalus_decode_result {
	uint32_t struct_size;	/* sizeof as the host knows it */
	uint32_t flags;		/* DAEDALUS_RESULT_* */
	/* DAEDALUS_DECODED: per plane, the offset one past the last byte
	 * written (at most planes[i].length). */
	uint64_t bytes_written[DAEDALUS_MAX_PLANES];
	/* Optional NUL-terminated UTF-8 text explaining an error. */
	char message[DAEDALUS_MESSAGE_SIZE];
};

/* Creates a session. Returns 0 and sets *session, or a negative errno
 * (-EOPNOTSUPP: codec/format/size not supported, -ENOMEM, ...). */
typedef int32_t (*daedalus_create_fn)(const struct daedalus_session_params *params,
				      struct daedalus_session **session);

/* Decodes one job. Returns DAEDALUS_DECODED, DAEDALUS_HELD,
 * DAEDALUS_NEED_KEYFRAME or a negative errno:
 *   -EINVAL      controls inconsistent with each other or the bitstream
 *   -EOPNOTSUPP  a stream feature the plugin cannot decode
 *   -EBADMSG     corrupt bitstream (the host then calls reset())
 *   -ENOSPC      the capture planes cannot hold the picture
 *   other        internal failure (-ENOMEM, -EIO, ...) */
typedef int32_t (*daedalus_decode_fn)(struct daedalus_session *session,
				      const struct daedalus_job *job,
				      const struct daedalus_capture *capture,
				      struct daedalus_decode_result *result);

/* Drops every reference picture and held slice; the next picture decoded
 * must be a key frame. */
typedef void (*daedalus_reset_fn)(struct daedalus_session *session);

/* Frees a session; the handle is invalid afterwards. */
typedef void (*daedalus_destroy_fn)(struct daedalus_session *session);

/* The plugin descriptor: static, immutable while the library is loaded. */
struct daedalus_backend {
	uint16_t abi_major;	/* DAEDALUS_BACKEND_ABI_MAJOR */
	uint16_t abi_minor;	/* DAEDALUS_BACKEND_ABI_MINOR */
	uint32_t struct_size;	/* sizeof(struct daedalus_backend) */
	const char *name;	/* NUL-terminated UTF-8, for logs */
	uint32_t codecs;	/* DAEDALUS_CODEC_BIT() of every codec */
	uint32_t flags;		/* zero */
	daedalus_create_fn create;
	daedalus_decode_fn decode;
	daedalus_reset_fn reset;
	daedalus_destroy_fn destroy;
};

/* Type of the entry point. */
typedef const struct daedalus_backend *(*daedalus_backend_entry_fn)(uint32_t host_abi_major,
								    uint32_t host_abi_minor);

#if defined(__GNUC__)
#define DAEDALUS_BACKEND_EXPORT __attribute__((visibility("default")))
#else
#define DAEDALUS_BACKEND_EXPORT
#endif

/* The entry point every plugin exports. Gets the host's ABI version;
 * returns the descriptor, or NULL when the plugin cannot serve that host. */
DAEDALUS_BACKEND_EXPORT const struct daedalus_backend *
daedalus_backend_entry(uint32_t host_abi_major, uint32_t host_abi_minor);

#ifdef __cplusplus
}
#endif

#endif /* DAEDALUS_BACKEND_H */
