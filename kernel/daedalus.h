/* SPDX-License-Identifier: GPL-2.0 */
/*
 * daedalus-v4l2: a V4L2 stateless decoder whose decoding runs in a
 * userspace daemon reached through /dev/daedalus-bridge.
 *
 * Copyright (C) 2026 The daedalus-v4l2 authors
 */
#ifndef _DAEDALUS_H
#define _DAEDALUS_H

#include <linux/list.h>
#include <linux/miscdevice.h>
#include <linux/mutex.h>
#include <linux/spinlock.h>
#include <linux/wait.h>
#include <linux/workqueue.h>
#include <media/media-device.h>
#include <media/v4l2-ctrls.h>
#include <media/v4l2-device.h>
#include <media/v4l2-fh.h>
#include <media/v4l2-mem2mem.h>
#include <media/videobuf2-v4l2.h>

#include "daedalus_bridge.h"
#include "daedalus_v4l2_proto.h"

#define DV_NAME		"daedalus"
#define DV_BUS_INFO	"platform:daedalus"

/* Wire codec numbers of struct dv_ctx_open. */
#define DV_CODEC_H264	1
#define DV_CODEC_HEVC	2
#define DV_CODEC_VP8	3
#define DV_CODEC_VP9	4
#define DV_CODEC_AV1	5

/* Most controls of one codec. */
#define DV_MAX_CODEC_CTRLS	8
/* Coded formats (codecs). */
#define DV_NUM_CODECS		5

#define DV_MIN_SIZE		16
#define DV_MAX_WIDTH		8192
#define DV_MAX_HEIGHT		4352
/* CAPTURE rows are a multiple of this many pixels (fmt::CAPTURE_ROW_ALIGN). */
#define DV_CAPTURE_ROW_ALIGN	128
/* Rows of padding below each YUV420M plane (fmt::PLANAR_SLACK_ROWS). */
#define DV_PLANAR_SLACK_ROWS	4
#define DV_MIN_CODED_BUFFER	(64 * 1024)
#define DV_MAX_CODED_BUFFER	(64 << 20)

extern unsigned int dv_job_timeout_ms;

/**
 * struct dv_coded_format - a coded (OUTPUT) format and its controls
 * @fourcc:	V4L2 pixel format
 * @codec:	DV_CODEC_*
 * @ctrls:	the codec's control templates
 * @num_ctrls:	entries of @ctrls
 */
struct dv_coded_format {
	u32 fourcc;
	u32 codec;
	const struct v4l2_ctrl_config *ctrls;
	unsigned int num_ctrls;
};

extern const struct dv_coded_format dv_coded_formats[];
extern const unsigned int dv_num_coded_formats;

/** enum dv_link - state of the daemon link */
enum dv_link {
	/** @DV_LINK_DETACHED: no daemon: ready jobs fail at once */
	DV_LINK_DETACHED,
	/** @DV_LINK_HANDSHAKING: HELLO queued, HELLO_REPLY awaited */
	DV_LINK_HANDSHAKING,
	/** @DV_LINK_ATTACHED: serving jobs */
	DV_LINK_ATTACHED,
};

/**
 * struct dv_stats - counters of the bridge (debug aid, printed at detach)
 * @fail_fast:	jobs failed at once without a daemon
 * @timeouts:	jobs failed by the deadline watchdog
 * @unknown:	results whose cookie is not in flight
 * @foreign:	results naming another context than their job's
 * @zombie_acks: results of jobs already cancelled
 * @errors:	jobs completed with VB2_BUF_STATE_ERROR
 */
struct dv_stats {
	u64 fail_fast;
	u64 timeouts;
	u64 unknown;
	u64 foreign;
	u64 zombie_acks;
	u64 errors;
};

/**
 * struct dv_bridge - the daemon link, the transmit queue and the jobs in flight
 * @lock:	spinlock protecting every field of this struct except @wq,
 *		@recv_mutex and @watchdog, plus &dv_ctx.node,
 *		&dv_ctx.opened_gen, &dv_ctx.refused_gen, &dv_ctx.dispatching,
 *		&dv_ctx.abort_requested and &dv_buffer.registered_gen. Never
 *		held while sleeping, allocating with GFP_KERNEL or completing
 *		a job (completion takes the control handler mutex).
 * @recv_mutex: serialises DV_BRIDGE_IOC_RECV callers, so that a datagram
 *		too large for the caller's buffer is reported without being
 *		lost.
 * @file_open:	the bridge device is open (one daemon at a time)
 * @link:	state of the link of the open file
 * @gen:	connection generation, incremented at each open
 * @handshake_deadline: jiffies by which HELLO_REPLY must arrive
 * @tx_seq:	sequence number of the last datagram queued
 * @next_cookie: cookie of the next job
 * @next_ctx_id: id of the next context (never 0)
 * @txq:	datagrams not yet received by the daemon (struct dv_txmsg)
 * @inflight:	jobs sent and not answered, including zombies (struct dv_job)
 * @contexts:	every open context (struct dv_ctx)
 * @stats:	counters
 * @wq:		woken when @txq gains a datagram or the link ends
 * @watchdog:	delayed work enforcing the job and handshake deadlines
 */
struct dv_bridge {
	spinlock_t lock;		/* link, queues, jobs, contexts */
	struct mutex recv_mutex;	/* one RECV at a time */
	bool file_open;
	enum dv_link link;
	u64 gen;
	unsigned long handshake_deadline;
	u32 tx_seq;
	u64 next_cookie;
	u32 next_ctx_id;
	struct list_head txq;
	struct list_head inflight;
	struct list_head contexts;
	struct dv_stats stats;
	wait_queue_head_t wq;
	struct delayed_work watchdog;
};

/**
 * struct dv_dev - the device
 * @v4l2_dev:	V4L2 device
 * @vfd:	the video node
 * @mdev:	the media device (requests)
 * @m2m_dev:	mem2mem device: runs one job at a time across contexts
 * @dev_mutex:	mutex serialising open/release and the video node's
 *		non-queue ioctls (vfd.lock)
 * @misc:	the bridge character device
 * @br:		the daemon link
 */
struct dv_dev {
	struct v4l2_device v4l2_dev;
	struct video_device vfd;
	struct media_device mdev;
	struct v4l2_m2m_dev *m2m_dev;
	struct mutex dev_mutex;		/* open/release, vfd ioctls */
	struct miscdevice misc;
	struct dv_bridge br;
};

/**
 * struct dv_ctx - one open of the video node
 * @fh:		V4L2 file handle (holds the m2m context)
 * @dev:	the device
 * @hdl:	controls of every codec
 * @ctrls:	the controls of each codec, in dv_coded_formats order (looked up
 *		once: v4l2_ctrl_find() cannot be called under the handler lock)
 * @vb_mutex:	mutex serialising the vb2 queue operations of both queues
 *		(vb2_queue.lock)
 * @coded_fmt:	OUTPUT format
 * @decoded_fmt: CAPTURE format
 * @codec:	the codec of @coded_fmt
 * @out_seq:	sequence number of the next OUTPUT buffer (device_run)
 * @cap_seq:	sequence number of the next CAPTURE picture (device_run)
 * @id:		context id on the wire
 * @node:	entry of dv_bridge.contexts (bridge lock)
 * @opened_gen:	connection on which CTX_OPEN was sent (bridge lock)
 * @refused_gen: connection whose daemon refused the context with
 *		CTX_STATUS (bridge lock); its jobs fail at once
 * @dispatching: device_run is preparing a job of this context (bridge lock)
 * @abort_requested: job_abort arrived while @dispatching (bridge lock)
 */
struct dv_ctx {
	struct v4l2_fh fh;
	struct dv_dev *dev;
	struct v4l2_ctrl_handler hdl;
	struct v4l2_ctrl *ctrls[DV_NUM_CODECS][DV_MAX_CODEC_CTRLS];
	struct mutex vb_mutex;		/* both vb2 queues */
	struct v4l2_format coded_fmt;
	struct v4l2_format decoded_fmt;
	const struct dv_coded_format *codec;
	u32 out_seq;
	u32 cap_seq;
	u32 id;
	struct list_head node;
	u64 opened_gen;
	u64 refused_gen;
	bool dispatching;
	bool abort_requested;
};

/**
 * struct dv_buffer - a vb2 buffer of either queue
 * @m2m:	mem2mem buffer (must be first)
 * @registered_gen: connection on which BUF_REGISTER was sent for the
 *		buffer's current memory (bridge lock); reset by buf_init
 */
struct dv_buffer {
	struct v4l2_m2m_buffer m2m;
	u64 registered_gen;
};

/**
 * struct dv_txmsg - a datagram waiting for the daemon
 * @node:	entry of dv_bridge.txq
 * @len:	bytes of @data
 * @num_fds:	dmabufs travelling with it
 * @dbufs:	references to the dmabufs (passed on to the daemon's fds)
 * @data:	the datagram
 */
struct dv_txmsg {
	struct list_head node;
	u32 len;
	u32 num_fds;
	struct dma_buf *dbufs[DV_MAX_PLANES];
	u8 data[];
};

/**
 * struct dv_job - a job sent to the daemon
 * @node:	entry of dv_bridge.inflight
 * @cookie:	the job's cookie
 * @ctx_id:	its context id
 * @ctx:	its context while active; NULL for a zombie (cancelled, its
 *		buffers already returned: kept until acknowledged, a second
 *		deadline or the end of the connection)
 * @deadline:	jiffies
 */
struct dv_job {
	struct list_head node;
	u64 cookie;
	u32 ctx_id;
	struct dv_ctx *ctx;
	unsigned long deadline;
};

static inline struct dv_ctx *dv_file_to_ctx(struct file *file)
{
	return container_of(file->private_data, struct dv_ctx, fh);
}

static inline struct dv_buffer *dv_vb2_to_buf(struct vb2_buffer *vb)
{
	return container_of(to_vb2_v4l2_buffer(vb), struct dv_buffer, m2m.vb);
}

/* daedalus-video.c */
extern const struct v4l2_ioctl_ops dv_ioctl_ops;
int dv_queue_init(void *priv, struct vb2_queue *src_vq,
		  struct vb2_queue *dst_vq);
int dv_request_validate(struct media_request *req);
void dv_set_default_format(struct dv_ctx *ctx);

/* daedalus-dec.c */
struct v4l2_ctrl *dv_ctrl(struct dv_ctx *ctx, u32 id);
void dv_device_run(void *priv);
void dv_job_abort(void *priv);
void dv_job_complete(struct dv_ctx *ctx, enum vb2_buffer_state state,
		     const struct dv_result *res);
void dv_watchdog_fn(struct work_struct *work);

/* daedalus-bridge.c */
int dv_bridge_register(struct dv_dev *dev);
void dv_bridge_unregister(struct dv_dev *dev);
struct dv_txmsg *dv_msg_alloc(u16 kind, const void *body, size_t body_len,
			      size_t extra, gfp_t gfp);
void dv_msg_free(struct dv_txmsg *msg);
void dv_bridge_queue_locked(struct dv_bridge *br, struct dv_txmsg *msg);
void dv_bridge_detach(struct dv_dev *dev, const char *why);
void dv_bridge_ctx_add(struct dv_dev *dev, struct dv_ctx *ctx);
void dv_bridge_ctx_remove(struct dv_dev *dev, struct dv_ctx *ctx);

#endif /* _DAEDALUS_H */
