// SPDX-License-Identifier: GPL-2.0
/*
 * daedalus-v4l2: jobs. device_run turns the next OUTPUT buffer, its
 * request's controls and a CAPTURE buffer into a DV_MSG_DECODE for the
 * daemon (after the CTX_OPEN and BUF_REGISTER this connection still
 * lacks); a job ends exactly once: by the daemon's RESULT, by its deadline
 * (watchdog), by STREAMOFF/close (job_abort) or by the end of the
 * connection. Without a daemon a job fails at once.
 *
 * This mirrors the transitions of crates/decoder-core/src/state.rs
 * (try_schedule/dispatch, daemon_receive, tick, streamoff, daemon_detach).
 *
 * Copyright (C) 2026 The daedalus-v4l2 authors
 */

#include <linux/dma-buf.h>
#include <linux/jiffies.h>
#include <linux/slab.h>

#include "daedalus.h"

/* Most buffers one job may need registered: OUTPUT, CAPTURE, references. */
#define DV_MAX_JOB_BUFS	(2 + DV_MAX_REFS)

/**
 * dv_ctrl() - a control of the context's current codec
 * @ctx: the context
 * @id: control id
 *
 * Safe under the control handler lock (no lookup in the handler).
 *
 * Return: the control, or NULL if the codec has no control @id.
 */
struct v4l2_ctrl *dv_ctrl(struct dv_ctx *ctx, u32 id)
{
	const struct dv_coded_format *cf = ctx->codec;
	unsigned int i, idx = cf - dv_coded_formats;

	for (i = 0; i < cf->num_ctrls; i++)
		if (cf->ctrls[i].id == id)
			return ctx->ctrls[idx][i];
	return NULL;
}

static void dv_put_ts(u64 *ts, unsigned int *n, u64 t)
{
	if (*n < DV_MAX_REFS)
		ts[(*n)++] = t;
}

/*
 * The timestamps of the reference pictures the current control values
 * name, as each codec's reference_timestamps in decoder-core.
 */
static unsigned int dv_ref_timestamps(struct dv_ctx *ctx, u64 *ts)
{
	struct v4l2_ctrl *c;
	unsigned int n = 0, i;

	switch (ctx->codec->codec) {
	case DV_CODEC_H264: {
		const struct v4l2_ctrl_h264_decode_params *dp;

		c = dv_ctrl(ctx, V4L2_CID_STATELESS_H264_DECODE_PARAMS);
		if (!c)
			break;
		dp = c->p_cur.p;
		for (i = 0; i < ARRAY_SIZE(dp->dpb); i++)
			if (dp->dpb[i].flags & V4L2_H264_DPB_ENTRY_FLAG_ACTIVE)
				dv_put_ts(ts, &n, dp->dpb[i].reference_ts);
		break;
	}
	case DV_CODEC_HEVC: {
		const struct v4l2_ctrl_hevc_decode_params *dp;
		unsigned int active;

		c = dv_ctrl(ctx, V4L2_CID_STATELESS_HEVC_DECODE_PARAMS);
		if (!c)
			break;
		dp = c->p_cur.p;
		active = min_t(unsigned int, dp->num_active_dpb_entries,
			       ARRAY_SIZE(dp->dpb));
		for (i = 0; i < active; i++)
			dv_put_ts(ts, &n, dp->dpb[i].timestamp);
		break;
	}
	case DV_CODEC_VP8: {
		const struct v4l2_ctrl_vp8_frame *f;

		c = dv_ctrl(ctx, V4L2_CID_STATELESS_VP8_FRAME);
		if (!c)
			break;
		f = c->p_cur.p;
		if (f->flags & V4L2_VP8_FRAME_FLAG_KEY_FRAME)
			break;
		dv_put_ts(ts, &n, f->last_frame_ts);
		dv_put_ts(ts, &n, f->golden_frame_ts);
		dv_put_ts(ts, &n, f->alt_frame_ts);
		break;
	}
	case DV_CODEC_VP9: {
		const struct v4l2_ctrl_vp9_frame *f;

		c = dv_ctrl(ctx, V4L2_CID_STATELESS_VP9_FRAME);
		if (!c)
			break;
		f = c->p_cur.p;
		if (f->flags & (V4L2_VP9_FRAME_FLAG_KEY_FRAME |
				V4L2_VP9_FRAME_FLAG_INTRA_ONLY))
			break;
		dv_put_ts(ts, &n, f->last_frame_ts);
		dv_put_ts(ts, &n, f->golden_frame_ts);
		dv_put_ts(ts, &n, f->alt_frame_ts);
		break;
	}
	case DV_CODEC_AV1: {
		const struct v4l2_ctrl_av1_frame *f;

		c = dv_ctrl(ctx, V4L2_CID_STATELESS_AV1_FRAME);
		if (!c)
			break;
		f = c->p_cur.p;
		if (f->frame_type == V4L2_AV1_KEY_FRAME ||
		    f->frame_type == V4L2_AV1_INTRA_ONLY_FRAME)
			break;
		for (i = 0; i < ARRAY_SIZE(f->ref_frame_idx); i++) {
			u8 idx = f->ref_frame_idx[i];

			if (idx < ARRAY_SIZE(f->reference_frame_ts))
				dv_put_ts(ts, &n, f->reference_frame_ts[idx]);
		}
		break;
	}
	}
	return n;
}

static u32 dv_ctrl_bytes(const struct v4l2_ctrl *c)
{
	return c->elems * c->elem_size;
}

/*
 * Builds the DECODE datagram: the fixed body, then every control of the
 * codec with its current value (the request's values were just applied).
 * Called with the control handler lock held.
 */
static struct dv_txmsg *dv_build_decode(struct dv_ctx *ctx,
					const struct dv_decode *job)
{
	const struct dv_coded_format *cf = ctx->codec;
	struct dv_decode body = *job;
	struct dv_txmsg *msg;
	size_t extra = 0;
	unsigned int i;
	u8 *p;

	for (i = 0; i < cf->num_ctrls; i++) {
		struct v4l2_ctrl *c = dv_ctrl(ctx, cf->ctrls[i].id);

		if (!c || !dv_ctrl_bytes(c))
			continue;
		extra += sizeof(struct dv_ctrl) + ALIGN(dv_ctrl_bytes(c), 8);
		body.num_ctrls++;
	}
	body.ctrl_bytes = extra;
	if (body.num_ctrls > DV_MAX_CTRLS ||
	    sizeof(struct dv_msg_header) + sizeof(body) + extra > DV_MAX_MSG_SIZE)
		return NULL;
	msg = dv_msg_alloc(DV_MSG_DECODE, &body, sizeof(body), extra,
			   GFP_KERNEL);
	if (!msg)
		return NULL;
	p = msg->data + sizeof(struct dv_msg_header) + sizeof(body);
	for (i = 0; i < cf->num_ctrls; i++) {
		struct v4l2_ctrl *c = dv_ctrl(ctx, cf->ctrls[i].id);
		struct dv_ctrl hdr;
		u32 size;

		if (!c || !dv_ctrl_bytes(c))
			continue;
		size = dv_ctrl_bytes(c);
		hdr.id = c->id;
		hdr.size = size;
		memcpy(p, &hdr, sizeof(hdr));
		p += sizeof(hdr);
		memcpy(p, c->p_cur.p, size);
		/* The tail padding is zero: dv_msg_alloc zeroes. */
		p += ALIGN(size, 8);
	}
	return msg;
}

static struct dv_txmsg *dv_build_ctx_open(struct dv_ctx *ctx)
{
	const struct v4l2_pix_format_mplane *out = &ctx->coded_fmt.fmt.pix_mp;
	const struct v4l2_pix_format_mplane *cap = &ctx->decoded_fmt.fmt.pix_mp;
	struct dv_ctx_open o = {
		.ctx_id = ctx->id,
		.codec = ctx->codec->codec,
		.coded_fourcc = out->pixelformat,
		.capture_fourcc = cap->pixelformat,
		.width = out->width,
		.height = out->height,
		.num_planes = cap->num_planes,
	};
	unsigned int i;

	for (i = 0; i < cap->num_planes && i < DV_MAX_PLANES; i++) {
		o.planes[i].bytesperline = cap->plane_fmt[i].bytesperline;
		o.planes[i].sizeimage = cap->plane_fmt[i].sizeimage;
	}
	return dv_msg_alloc(DV_MSG_CTX_OPEN, &o, sizeof(o), 0, GFP_KERNEL);
}

/*
 * BUF_REGISTER with one dmabuf per plane: the imported dmabuf of a DMABUF
 * buffer, or a new export of an MMAP buffer (as VIDIOC_EXPBUF does).
 */
static struct dv_txmsg *dv_build_buf_register(struct dv_ctx *ctx,
					      struct vb2_buffer *vb)
{
	struct vb2_queue *q = vb->vb2_queue;
	struct dv_buf_register r = {
		.ctx_id = ctx->id,
		.queue = V4L2_TYPE_IS_OUTPUT(q->type) ? DV_QUEUE_OUTPUT :
							DV_QUEUE_CAPTURE,
		.index = vb->index,
		.num_planes = vb->num_planes,
		.memory = DV_MEM_DMABUF,
	};
	struct dv_txmsg *msg;
	unsigned int p;

	if (vb->num_planes > DV_MAX_PLANES)
		return NULL;
	for (p = 0; p < vb->num_planes; p++) {
		r.planes[p].fd_index = p;
		r.planes[p].length = vb->planes[p].length;
	}
	msg = dv_msg_alloc(DV_MSG_BUF_REGISTER, &r, sizeof(r), 0, GFP_KERNEL);
	if (!msg)
		return NULL;
	for (p = 0; p < vb->num_planes; p++) {
		struct dma_buf *dbuf;

		if (vb->memory == VB2_MEMORY_DMABUF) {
			dbuf = vb->planes[p].dbuf;
			if (!dbuf)
				goto fail;
			get_dma_buf(dbuf);
		} else if (vb->memory == VB2_MEMORY_MMAP &&
			   q->mem_ops->get_dmabuf) {
			dbuf = q->mem_ops->get_dmabuf(vb, vb->planes[p].mem_priv,
						      O_RDWR);
			if (IS_ERR_OR_NULL(dbuf))
				goto fail;
		} else {
			goto fail;
		}
		msg->dbufs[p] = dbuf;
		msg->num_fds = p + 1;
	}
	return msg;

fail:
	dv_msg_free(msg);
	return NULL;
}

/**
 * dv_job_complete() - returns the running job's buffers and request
 * @ctx: the context whose m2m job is running
 * @state: VB2_BUF_STATE_DONE (only from a DONE result) or ERROR
 * @res: the daemon's result for DONE (CAPTURE payloads, flags), or NULL
 *
 * The CAPTURE buffer is returned before the OUTPUT buffer and the request
 * (or held, with V4L2_BUF_FLAG_M2M_HOLD_CAPTURE_BUF); the next job is
 * scheduled from v4l2-mem2mem's work item, so this never re-enters
 * device_run. Process context: takes the control handler mutex. Never
 * called with the bridge lock held.
 */
void dv_job_complete(struct dv_ctx *ctx, enum vb2_buffer_state state,
		     const struct dv_result *res)
{
	struct v4l2_m2m_ctx *m2m_ctx = ctx->fh.m2m_ctx;
	struct vb2_v4l2_buffer *src, *dst;
	unsigned int p;

	src = v4l2_m2m_next_src_buf(m2m_ctx);
	dst = v4l2_m2m_next_dst_buf(m2m_ctx);
	if (WARN_ON(!src || !dst))
		return;
	if (state == VB2_BUF_STATE_DONE && res) {
		for (p = 0; p < dst->vb2_buf.num_planes && p < DV_MAX_PLANES;
		     p++) {
			u32 used = res->bytesused[p];

			if (used && used <= vb2_plane_size(&dst->vb2_buf, p))
				vb2_set_plane_payload(&dst->vb2_buf, p, used);
		}
		if (res->flags & DV_RESULT_KEYFRAME)
			dst->flags |= V4L2_BUF_FLAG_KEYFRAME;
	}
	if (state != VB2_BUF_STATE_DONE) {
		unsigned long flags;

		spin_lock_irqsave(&ctx->dev->br.lock, flags);
		ctx->dev->br.stats.errors++;
		spin_unlock_irqrestore(&ctx->dev->br.lock, flags);
	}
	v4l2_ctrl_request_complete(src->vb2_buf.req_obj.req, &ctx->hdl);
	v4l2_m2m_buf_done_and_job_finish(ctx->dev->m2m_dev, m2m_ctx, state);
}

static void dv_arm_watchdog(struct dv_bridge *br, unsigned long deadline)
{
	unsigned long now = jiffies;

	mod_delayed_work(system_wq, &br->watchdog,
			 time_after(deadline, now) ? deadline - now : 0);
}

/**
 * dv_device_run() - m2m device_run: dispatch the next job or fail it
 * @priv: the context
 *
 * Process context (v4l2-mem2mem calls it from QBUF, STREAMON, request
 * queueing or its work item), one job at a time per device.
 */
void dv_device_run(void *priv)
{
	struct dv_ctx *ctx = priv;
	struct dv_dev *dev = ctx->dev;
	struct dv_bridge *br = &dev->br;
	struct v4l2_m2m_ctx *m2m_ctx = ctx->fh.m2m_ctx;
	struct vb2_queue *cap_q = v4l2_m2m_get_dst_vq(m2m_ctx);
	struct vb2_v4l2_buffer *src, *dst;
	struct vb2_buffer *bufs[DV_MAX_JOB_BUFS];
	struct dv_txmsg *regs[DV_MAX_JOB_BUFS] = {};
	struct dv_txmsg *open = NULL, *decode = NULL;
	struct media_request *req;
	struct dv_decode job = {};
	u64 ts[DV_MAX_REFS];
	unsigned int nbufs = 0, nts, i;
	struct dv_job *j = NULL;
	bool aborted = false;
	unsigned long flags;
	u64 gen;

	src = v4l2_m2m_next_src_buf(m2m_ctx);
	dst = v4l2_m2m_next_dst_buf(m2m_ctx);
	req = src->vb2_buf.req_obj.req;
	src->sequence = ctx->out_seq++;
	if (m2m_ctx->new_frame)
		dst->sequence = ctx->cap_seq++;
	/* Before any failure: an ERROR picture carries its job's timestamp. */
	v4l2_m2m_buf_copy_metadata(src, dst, true);

	spin_lock_irqsave(&br->lock, flags);
	ctx->dispatching = true;
	ctx->abort_requested = false;
	gen = br->gen;
	if (br->link == DV_LINK_DETACHED || ctx->refused_gen == gen) {
		br->stats.fail_fast++;
		goto fail_locked;
	}
	job.cookie = br->next_cookie++;
	spin_unlock_irqrestore(&br->lock, flags);

	if (req)
		v4l2_ctrl_request_setup(req, &ctx->hdl);

	job.ctx_id = ctx->id;
	if (src->flags & V4L2_BUF_FLAG_M2M_HOLD_CAPTURE_BUF)
		job.flags |= DV_DECODE_HOLD_CAPTURE;
	if (!m2m_ctx->new_frame)
		job.flags |= DV_DECODE_CONTINUE;
	job.timestamp = src->vb2_buf.timestamp;
	job.output_index = src->vb2_buf.index;
	job.bytesused = vb2_get_plane_payload(&src->vb2_buf, 0);
	job.capture_index = dst->vb2_buf.index;
	bufs[nbufs++] = &src->vb2_buf;
	bufs[nbufs++] = &dst->vb2_buf;

	mutex_lock(ctx->hdl.lock);
	nts = dv_ref_timestamps(ctx, ts);
	for (i = 0; i < nts; i++) {
		struct vb2_buffer *ref = vb2_find_buffer(cap_q, ts[i]);

		job.refs[i].timestamp = ts[i];
		job.refs[i].capture_index = DV_NO_BUFFER;
		if (ref && ref != &dst->vb2_buf) {
			job.refs[i].capture_index = ref->index;
			bufs[nbufs++] = ref;
		}
	}
	job.num_refs = nts;
	decode = dv_build_decode(ctx, &job);
	mutex_unlock(ctx->hdl.lock);
	if (!decode)
		goto fail;

	/* Only this function sets opened_gen and registered_gen. */
	if (READ_ONCE(ctx->opened_gen) != gen) {
		open = dv_build_ctx_open(ctx);
		if (!open)
			goto fail;
	}
	for (i = 0; i < nbufs; i++) {
		bool dup = false;
		unsigned int k;

		for (k = 0; k < i; k++)
			dup |= bufs[k] == bufs[i];
		if (dup || READ_ONCE(dv_vb2_to_buf(bufs[i])->registered_gen) == gen)
			continue;
		regs[i] = dv_build_buf_register(ctx, bufs[i]);
		if (!regs[i])
			goto fail;
	}
	j = kzalloc(sizeof(*j), GFP_KERNEL);
	if (!j)
		goto fail;
	j->cookie = job.cookie;
	j->ctx_id = ctx->id;
	j->ctx = ctx;
	j->deadline = jiffies + msecs_to_jiffies(dv_job_timeout_ms);

	spin_lock_irqsave(&br->lock, flags);
	ctx->dispatching = false;
	aborted = ctx->abort_requested;
	if (br->gen != gen || br->link == DV_LINK_DETACHED || aborted) {
		if (!aborted)
			br->stats.fail_fast++;
		spin_unlock_irqrestore(&br->lock, flags);
		goto fail;
	}
	if (open) {
		dv_bridge_queue_locked(br, open);
		ctx->opened_gen = gen;
		open = NULL;
	}
	for (i = 0; i < nbufs; i++) {
		if (!regs[i])
			continue;
		dv_bridge_queue_locked(br, regs[i]);
		dv_vb2_to_buf(bufs[i])->registered_gen = gen;
		regs[i] = NULL;
	}
	dv_bridge_queue_locked(br, decode);
	list_add_tail(&j->node, &br->inflight);
	dv_arm_watchdog(br, j->deadline);
	spin_unlock_irqrestore(&br->lock, flags);
	wake_up_interruptible(&br->wq);
	return;

fail_locked:
	ctx->dispatching = false;
	spin_unlock_irqrestore(&br->lock, flags);
fail:
	kfree(j);
	dv_msg_free(open);
	dv_msg_free(decode);
	for (i = 0; i < nbufs; i++)
		dv_msg_free(regs[i]);
	dv_job_complete(ctx, VB2_BUF_STATE_ERROR, NULL);
}

/* CANCEL for a job turned zombie; best effort (GFP_ATOMIC). */
static void dv_cancel_locked(struct dv_bridge *br, struct dv_job *j)
{
	struct dv_cancel c = { .ctx_id = j->ctx_id, .cookie = j->cookie };
	struct dv_txmsg *msg;

	if (br->link != DV_LINK_ATTACHED)
		return;
	msg = dv_msg_alloc(DV_MSG_CANCEL, &c, sizeof(c), 0, GFP_ATOMIC);
	if (msg)
		dv_bridge_queue_locked(br, msg);
}

/**
 * dv_job_abort() - m2m job_abort: STREAMOFF or close of a running context
 * @priv: the context
 *
 * Never waits for the daemon: the job becomes a zombie (CANCEL sent) and
 * completes with an error at once. If device_run is still preparing it,
 * device_run fails it when done.
 */
void dv_job_abort(void *priv)
{
	struct dv_ctx *ctx = priv;
	struct dv_bridge *br = &ctx->dev->br;
	struct dv_job *j, *found = NULL;
	unsigned long flags;

	spin_lock_irqsave(&br->lock, flags);
	list_for_each_entry(j, &br->inflight, node) {
		if (j->ctx == ctx) {
			found = j;
			break;
		}
	}
	if (found) {
		found->ctx = NULL;
		found->deadline = jiffies + msecs_to_jiffies(dv_job_timeout_ms);
		dv_cancel_locked(br, found);
		dv_arm_watchdog(br, found->deadline);
	} else if (ctx->dispatching) {
		ctx->abort_requested = true;
	}
	spin_unlock_irqrestore(&br->lock, flags);
	if (found) {
		wake_up_interruptible(&br->wq);
		dv_job_complete(ctx, VB2_BUF_STATE_ERROR, NULL);
	}
}

/**
 * dv_watchdog_fn() - deadlines: overdue jobs fail (and become zombies),
 * overdue zombies are dropped, an overdue handshake ends the connection
 * @work: dv_bridge.watchdog
 */
void dv_watchdog_fn(struct work_struct *work)
{
	struct dv_bridge *br = container_of(to_delayed_work(work),
					    struct dv_bridge, watchdog);
	struct dv_dev *dev = container_of(br, struct dv_dev, br);
	struct dv_ctx *expired[8];
	unsigned int nexp, i;
	unsigned long flags, now, next;
	struct dv_job *j, *tmp;
	bool handshake_late, again, pending;

	do {
		nexp = 0;
		again = false;
		pending = false;
		now = jiffies;
		next = now + msecs_to_jiffies(dv_job_timeout_ms);
		spin_lock_irqsave(&br->lock, flags);
		handshake_late = br->link == DV_LINK_HANDSHAKING &&
				 time_after_eq(now, br->handshake_deadline);
		if (br->link == DV_LINK_HANDSHAKING && !handshake_late) {
			next = br->handshake_deadline;
			pending = true;
		}
		list_for_each_entry_safe(j, tmp, &br->inflight, node) {
			if (time_before(now, j->deadline)) {
				if (!pending || time_before(j->deadline, next))
					next = j->deadline;
				pending = true;
				continue;
			}
			if (!j->ctx) {
				list_del(&j->node);
				kfree(j);
				continue;
			}
			if (nexp == ARRAY_SIZE(expired)) {
				again = true;
				continue;
			}
			expired[nexp++] = j->ctx;
			br->stats.timeouts++;
			j->ctx = NULL;
			j->deadline = now + msecs_to_jiffies(dv_job_timeout_ms);
			dv_cancel_locked(br, j);
			if (!pending || time_before(j->deadline, next))
				next = j->deadline;
			pending = true;
		}
		if (pending && !handshake_late)
			dv_arm_watchdog(br, next);
		spin_unlock_irqrestore(&br->lock, flags);

		if (nexp)
			wake_up_interruptible(&br->wq);
		for (i = 0; i < nexp; i++) {
			dev_warn_ratelimited(dev->v4l2_dev.dev,
					     "context %u: job past its deadline\n",
					     expired[i]->id);
			dv_job_complete(expired[i], VB2_BUF_STATE_ERROR, NULL);
		}
	} while (again);

	if (handshake_late)
		dv_bridge_detach(dev, "no HELLO_REPLY before the deadline");
}
