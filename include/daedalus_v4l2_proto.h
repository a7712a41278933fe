/* SPDX-License-Identifier: (GPL-2.0 WITH Linux-syscall-note) OR BSD-2-Clause */
/*
 * daedalus-v4l2 bridge protocol between a frontend (kernel module, CUSE
 * server) and the decoding daemon.
 *
 * This header is the C twin of crates/decoder-core/src/proto.rs, which is the
 * definition; crates/decoder-core/tests/proto_c_header.rs fails when the two
 * differ in any struct size, field offset, field size or constant.
 *
 * One message is one datagram: struct dv_msg_header, then the fixed body of
 * its kind, then (DV_MSG_DECODE only) ctrl_bytes of controls, each a struct
 * dv_ctrl followed by its payload padded with zeroes to 8 bytes.
 * Little-endian, no implicit padding. File descriptors travel out of band.
 */
#ifndef _DAEDALUS_V4L2_PROTO_H
#define _DAEDALUS_V4L2_PROTO_H

#include <linux/types.h>

#define DV_MAGIC		0x4c345644u	/* "DV4L" little-endian */
#define DV_VERSION_MAJOR	1
#define DV_VERSION_MINOR	0
#define DV_MAX_MSG_SIZE		(1u << 20)
#define DV_MAX_CTRLS		32
#define DV_MAX_CTRL_SIZE	(256u * 1024)
#define DV_MAX_REFS		16
#define DV_MAX_PLANES		4
#define DV_NO_BUFFER		0xffffffffu

#define DV_FEAT_DMABUF		(1ull << 0)
#define DV_FEAT_MEMFD		(1ull << 1)
#define DV_FEAT_CANCEL		(1ull << 2)
#define DV_FEAT_HOLD_CAPTURE	(1ull << 3)
#define DV_FEAT_ALL		(DV_FEAT_DMABUF | DV_FEAT_MEMFD | \
				 DV_FEAT_CANCEL | DV_FEAT_HOLD_CAPTURE)

#define DV_QUEUE_OUTPUT		0
#define DV_QUEUE_CAPTURE	1

#define DV_MEM_DMABUF		1
#define DV_MEM_MEMFD		2

#define DV_DECODE_HOLD_CAPTURE	(1u << 0)
#define DV_DECODE_CONTINUE	(1u << 1)
#define DV_DECODE_ALL		(DV_DECODE_HOLD_CAPTURE | DV_DECODE_CONTINUE)

#define DV_STATUS_DONE		0
#define DV_STATUS_ERROR		1

#define DV_RESULT_KEYFRAME	(1u << 0)
#define DV_RESULT_CORRUPTED	(1u << 1)
#define DV_RESULT_ALL		(DV_RESULT_KEYFRAME | DV_RESULT_CORRUPTED)

#define DV_MSG_HELLO		1
#define DV_MSG_HELLO_REPLY	2
#define DV_MSG_CTX_OPEN		3
#define DV_MSG_CTX_CLOSE	4
#define DV_MSG_BUF_REGISTER	5
#define DV_MSG_BUF_UNREGISTER	6
#define DV_MSG_DECODE		7
#define DV_MSG_CANCEL		8
#define DV_MSG_RESULT		16
#define DV_MSG_CTX_STATUS	17

struct dv_msg_header {
	__u32 magic;
	__u16 kind;
	__u16 version;
	__u32 len;		/* whole message, header included */
	__u32 seq;
};

struct dv_hello {
	__u16 version_major;
	__u16 version_minor;
	__u32 max_inflight;
	__u64 features;
	__u32 max_msg_size;
	__u32 reserved;
};

struct dv_plane_fmt {
	__u32 bytesperline;
	__u32 sizeimage;
};

struct dv_ctx_open {
	__u32 ctx_id;
	__u32 codec;		/* 1 H264, 2 HEVC, 3 VP8, 4 VP9, 5 AV1 */
	__u32 coded_fourcc;
	__u32 capture_fourcc;
	__u32 width;
	__u32 height;
	__u32 num_planes;
	__u32 reserved;
	struct dv_plane_fmt planes[DV_MAX_PLANES];
};

struct dv_ctx_close {
	__u32 ctx_id;
	__u32 reserved;
};

struct dv_buf_plane {
	__u32 fd_index;
	__u32 offset;
	__u32 length;
	__u32 reserved;
};

struct dv_buf_register {
	__u32 ctx_id;
	__u32 queue;
	__u32 index;
	__u32 num_planes;
	__u32 memory;
	__u32 reserved;
	struct dv_buf_plane planes[DV_MAX_PLANES];
};

struct dv_buf_unregister {
	__u32 ctx_id;
	__u32 queue;
	__u32 index;
	__u32 reserved;
};

struct dv_ref {
	__u64 timestamp;
	__u32 capture_index;	/* DV_NO_BUFFER when no buffer holds it */
	__u32 reserved;
};

struct dv_decode {
	__u32 ctx_id;
	__u32 flags;
	__u64 cookie;
	__u64 timestamp;
	__u32 output_index;
	__u32 bytesused;
	__u32 capture_index;
	__u32 num_refs;
	__u32 num_ctrls;
	__u32 ctrl_bytes;
	struct dv_ref refs[DV_MAX_REFS];
};

struct dv_ctrl {
	__u32 id;
	__u32 size;
};

struct dv_cancel {
	__u32 ctx_id;
	__u32 reserved;
	__u64 cookie;
};

struct dv_result {
	__u32 ctx_id;
	__u32 status;
	__u64 cookie;
	__u32 error;
	__u32 flags;
	__u32 bytesused[DV_MAX_PLANES];
};

struct dv_ctx_status {
	__u32 ctx_id;
	__u32 error;
};

#endif /* _DAEDALUS_V4L2_PROTO_H */
