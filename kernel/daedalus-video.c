// SPDX-License-Identifier: GPL-2.0
/*
 * daedalus-v4l2: the V4L2 side: formats, ioctls, vb2 queues, requests.
 *
 * Formats follow crates/decoder-core/src/fmt.rs: five coded formats on
 * OUTPUT; NV12, NV12M, YUV420M and P010 on CAPTURE, 16-pixel aligned,
 * derived from the coded size.
 *
 * Copyright (C) 2026 The daedalus-v4l2 authors
 */

#include <linux/slab.h>
#include <media/v4l2-event.h>
#include <media/v4l2-ioctl.h>
#include <media/videobuf2-vmalloc.h>

#include "daedalus.h"

static const u32 dv_decoded_formats[] = {
	V4L2_PIX_FMT_NV12,
	V4L2_PIX_FMT_NV12M,
	V4L2_PIX_FMT_YUV420M,
	V4L2_PIX_FMT_P010,
};

static const struct dv_coded_format *dv_find_coded(u32 fourcc)
{
	unsigned int i;

	for (i = 0; i < dv_num_coded_formats; i++)
		if (dv_coded_formats[i].fourcc == fourcc)
			return &dv_coded_formats[i];
	return NULL;
}

/*
 * Bit depth of the stream as the current controls describe it (the SPS,
 * the VP9 frame, the AV1 sequence): CAPTURE offers NV12/NV12M/YUV420M for
 * 8 bits, P010 for more, like hantro and rkvdec, so that a client picking
 * the first format it likes gets one the daemon can write.
 */
static unsigned int dv_bit_depth(struct dv_ctx *ctx)
{
	unsigned int depth = 8;
	struct v4l2_ctrl *c;
	u32 id;

	switch (ctx->codec->codec) {
	case DV_CODEC_H264:
		id = V4L2_CID_STATELESS_H264_SPS;
		break;
	case DV_CODEC_HEVC:
		id = V4L2_CID_STATELESS_HEVC_SPS;
		break;
	case DV_CODEC_VP9:
		id = V4L2_CID_STATELESS_VP9_FRAME;
		break;
	case DV_CODEC_AV1:
		id = V4L2_CID_STATELESS_AV1_SEQUENCE;
		break;
	default:
		return 8;
	}
	c = dv_ctrl(ctx, id);
	if (!c)
		return 8;
	mutex_lock(ctx->hdl.lock);
	switch (ctx->codec->codec) {
	case DV_CODEC_H264: {
		const struct v4l2_ctrl_h264_sps *sps = c->p_cur.p;

		depth = sps->bit_depth_luma_minus8 + 8;
		break;
	}
	case DV_CODEC_HEVC: {
		const struct v4l2_ctrl_hevc_sps *sps = c->p_cur.p;

		depth = sps->bit_depth_luma_minus8 + 8;
		break;
	}
	case DV_CODEC_VP9:
		depth = ((const struct v4l2_ctrl_vp9_frame *)c->p_cur.p)->bit_depth;
		break;
	case DV_CODEC_AV1:
		depth = ((const struct v4l2_ctrl_av1_sequence *)c->p_cur.p)->bit_depth;
		break;
	}
	mutex_unlock(ctx->hdl.lock);
	return depth > 8 ? 10 : 8;
}

static bool dv_fits_depth(u32 fourcc, unsigned int depth)
{
	return (fourcc == V4L2_PIX_FMT_P010) == (depth > 8);
}

static bool dv_is_decoded(u32 fourcc, unsigned int depth)
{
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(dv_decoded_formats); i++)
		if (dv_decoded_formats[i] == fourcc)
			return dv_fits_depth(fourcc, depth);
	return false;
}

static u32 dv_first_decoded(unsigned int depth)
{
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(dv_decoded_formats); i++)
		if (dv_fits_depth(dv_decoded_formats[i], depth))
			return dv_decoded_formats[i];
	return dv_decoded_formats[0];
}

static void dv_init_fmt(struct v4l2_format *f, u32 type)
{
	struct v4l2_pix_format_mplane *pix = &f->fmt.pix_mp;

	memset(f, 0, sizeof(*f));
	f->type = type;
	pix->field = V4L2_FIELD_NONE;
	pix->colorspace = V4L2_COLORSPACE_REC709;
	pix->ycbcr_enc = V4L2_YCBCR_ENC_DEFAULT;
	pix->quantization = V4L2_QUANTIZATION_DEFAULT;
	pix->xfer_func = V4L2_XFER_FUNC_DEFAULT;
}

/* fmt::try_coded */
static void dv_try_coded(struct v4l2_pix_format_mplane *pix)
{
	u32 need, max;

	if (!dv_find_coded(pix->pixelformat))
		pix->pixelformat = dv_coded_formats[0].fourcc;
	pix->width = clamp_t(u32, pix->width, DV_MIN_SIZE, DV_MAX_WIDTH);
	pix->height = clamp_t(u32, pix->height, DV_MIN_SIZE, DV_MAX_HEIGHT);
	need = max_t(u32, pix->width * pix->height * 3 / 2,
		     DV_MIN_CODED_BUFFER);
	max = max_t(u32, need, DV_MAX_CODED_BUFFER);
	pix->plane_fmt[0].sizeimage = clamp_t(u32, pix->plane_fmt[0].sizeimage,
					      need, max);
	pix->plane_fmt[0].bytesperline = 0;
	pix->num_planes = 1;
	pix->field = V4L2_FIELD_NONE;
	pix->flags = 0;
	memset(pix->reserved, 0, sizeof(pix->reserved));
	memset(pix->plane_fmt[0].reserved, 0,
	       sizeof(pix->plane_fmt[0].reserved));
}

/*
 * fmt::try_decoded: the size is the coded size, aligned to 16; rows padded
 * to DV_CAPTURE_ROW_ALIGN pixels (fmt::CAPTURE_ROW_ALIGN: line sizes
 * libavcodec and dav1d accept, so the daemon decodes in place); YUV420M
 * planes also padded below the picture to the height libavcodec and dav1d
 * pad theirs to, so that every plane is decoded in place; the format one of
 * those of the stream's bit depth.
 */
static void dv_try_decoded(struct v4l2_pix_format_mplane *pix,
			   const struct v4l2_pix_format_mplane *coded,
			   unsigned int depth)
{
	u32 w, h, bps, bpl, luma, chroma, rows;
	unsigned int i;

	if (!dv_is_decoded(pix->pixelformat, depth))
		pix->pixelformat = dv_first_decoded(depth);
	w = ALIGN(clamp_t(u32, coded->width, DV_MIN_SIZE, DV_MAX_WIDTH), 16);
	h = ALIGN(clamp_t(u32, coded->height, DV_MIN_SIZE, DV_MAX_HEIGHT), 16);
	bps = pix->pixelformat == V4L2_PIX_FMT_P010 ? 2 : 1;
	bpl = ALIGN(w, DV_CAPTURE_ROW_ALIGN) * bps;
	luma = bpl * h;
	chroma = luma / 2;
	pix->width = w;
	pix->height = h;
	pix->field = V4L2_FIELD_NONE;
	pix->flags = 0;
	memset(pix->reserved, 0, sizeof(pix->reserved));
	memset(pix->plane_fmt, 0, sizeof(pix->plane_fmt));
	if (pix->pixelformat == V4L2_PIX_FMT_NV12M) {
		pix->num_planes = 2;
		pix->plane_fmt[0].bytesperline = bpl;
		pix->plane_fmt[0].sizeimage = luma;
		pix->plane_fmt[1].bytesperline = bpl;
		pix->plane_fmt[1].sizeimage = chroma;
	} else if (pix->pixelformat == V4L2_PIX_FMT_YUV420M) {
		rows = ALIGN(h, DV_CAPTURE_ROW_ALIGN);
		pix->num_planes = 3;
		pix->plane_fmt[0].bytesperline = bpl;
		pix->plane_fmt[0].sizeimage = bpl * (rows + DV_PLANAR_SLACK_ROWS);
		for (i = 1; i < 3; i++) {
			pix->plane_fmt[i].bytesperline = bpl / 2;
			pix->plane_fmt[i].sizeimage =
				bpl / 2 * (rows / 2 + DV_PLANAR_SLACK_ROWS);
		}
	} else {
		pix->num_planes = 1;
		pix->plane_fmt[0].bytesperline = bpl;
		pix->plane_fmt[0].sizeimage = luma + chroma;
	}
	for (i = 0; i < pix->num_planes; i++)
		memset(pix->plane_fmt[i].reserved, 0,
		       sizeof(pix->plane_fmt[i].reserved));
}

/* New formats: the daemon gets a new CTX_OPEN (and may accept them). */
static void dv_forget_open(struct dv_ctx *ctx)
{
	unsigned long flags;

	spin_lock_irqsave(&ctx->dev->br.lock, flags);
	ctx->opened_gen = 0;
	ctx->refused_gen = 0;
	spin_unlock_irqrestore(&ctx->dev->br.lock, flags);
}

static void dv_reset_decoded(struct dv_ctx *ctx)
{
	struct v4l2_pix_format_mplane *coded = &ctx->coded_fmt.fmt.pix_mp;
	struct v4l2_pix_format_mplane *pix = &ctx->decoded_fmt.fmt.pix_mp;
	u32 fourcc = pix->pixelformat;

	dv_init_fmt(&ctx->decoded_fmt, V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE);
	pix->pixelformat = fourcc;
	dv_try_decoded(pix, coded, dv_bit_depth(ctx));
	pix->colorspace = coded->colorspace;
	pix->xfer_func = coded->xfer_func;
	pix->ycbcr_enc = coded->ycbcr_enc;
	pix->quantization = coded->quantization;
}

/**
 * dv_set_default_format() - H.264 at the smallest size, NV12
 * @ctx: a context being opened
 */
void dv_set_default_format(struct dv_ctx *ctx)
{
	struct v4l2_pix_format_mplane *pix = &ctx->coded_fmt.fmt.pix_mp;

	dv_init_fmt(&ctx->coded_fmt, V4L2_BUF_TYPE_VIDEO_OUTPUT_MPLANE);
	pix->pixelformat = dv_coded_formats[0].fourcc;
	pix->width = DV_MIN_SIZE;
	pix->height = DV_MIN_SIZE;
	dv_try_coded(pix);
	ctx->codec = &dv_coded_formats[0];
	ctx->decoded_fmt.fmt.pix_mp.pixelformat = dv_decoded_formats[0];
	dv_reset_decoded(ctx);
}

static int dv_querycap(struct file *file, void *priv,
		       struct v4l2_capability *cap)
{
	strscpy(cap->driver, DV_NAME, sizeof(cap->driver));
	strscpy(cap->card, DV_NAME, sizeof(cap->card));
	strscpy(cap->bus_info, DV_BUS_INFO, sizeof(cap->bus_info));
	return 0;
}

static int dv_enum_fmt_vid_out(struct file *file, void *priv,
			       struct v4l2_fmtdesc *f)
{
	if (f->index >= dv_num_coded_formats)
		return -EINVAL;
	f->pixelformat = dv_coded_formats[f->index].fourcc;
	f->flags = V4L2_FMT_FLAG_COMPRESSED;
	return 0;
}

static int dv_enum_fmt_vid_cap(struct file *file, void *priv,
			       struct v4l2_fmtdesc *f)
{
	unsigned int depth = dv_bit_depth(dv_file_to_ctx(file));
	unsigned int i, n = 0;

	for (i = 0; i < ARRAY_SIZE(dv_decoded_formats); i++) {
		if (!dv_fits_depth(dv_decoded_formats[i], depth))
			continue;
		if (n++ == f->index) {
			f->pixelformat = dv_decoded_formats[i];
			return 0;
		}
	}
	return -EINVAL;
}

static int dv_g_fmt_vid_out(struct file *file, void *priv,
			    struct v4l2_format *f)
{
	f->fmt.pix_mp = dv_file_to_ctx(file)->coded_fmt.fmt.pix_mp;
	return 0;
}

static int dv_g_fmt_vid_cap(struct file *file, void *priv,
			    struct v4l2_format *f)
{
	f->fmt.pix_mp = dv_file_to_ctx(file)->decoded_fmt.fmt.pix_mp;
	return 0;
}

static int dv_try_fmt_vid_out(struct file *file, void *priv,
			      struct v4l2_format *f)
{
	dv_try_coded(&f->fmt.pix_mp);
	return 0;
}

static int dv_try_fmt_vid_cap(struct file *file, void *priv,
			      struct v4l2_format *f)
{
	struct dv_ctx *ctx = dv_file_to_ctx(file);
	struct v4l2_pix_format_mplane *pix = &f->fmt.pix_mp;
	const struct v4l2_pix_format_mplane *cur = &ctx->decoded_fmt.fmt.pix_mp;

	dv_try_decoded(pix, &ctx->coded_fmt.fmt.pix_mp, dv_bit_depth(ctx));
	pix->colorspace = cur->colorspace;
	pix->xfer_func = cur->xfer_func;
	pix->ycbcr_enc = cur->ycbcr_enc;
	pix->quantization = cur->quantization;
	return 0;
}

static int dv_s_fmt_vid_out(struct file *file, void *priv,
			    struct v4l2_format *f)
{
	struct dv_ctx *ctx = dv_file_to_ctx(file);
	struct v4l2_m2m_ctx *m2m_ctx = ctx->fh.m2m_ctx;

	if (vb2_is_busy(v4l2_m2m_get_src_vq(m2m_ctx)) ||
	    vb2_is_busy(v4l2_m2m_get_dst_vq(m2m_ctx)))
		return -EBUSY;
	dv_try_coded(&f->fmt.pix_mp);
	ctx->coded_fmt.fmt.pix_mp = f->fmt.pix_mp;
	ctx->codec = dv_find_coded(f->fmt.pix_mp.pixelformat);
	dv_reset_decoded(ctx);
	dv_forget_open(ctx);
	return 0;
}

static int dv_s_fmt_vid_cap(struct file *file, void *priv,
			    struct v4l2_format *f)
{
	struct dv_ctx *ctx = dv_file_to_ctx(file);

	if (vb2_is_busy(v4l2_m2m_get_dst_vq(ctx->fh.m2m_ctx)))
		return -EBUSY;
	dv_try_fmt_vid_cap(file, priv, f);
	ctx->decoded_fmt.fmt.pix_mp = f->fmt.pix_mp;
	dv_forget_open(ctx);
	return 0;
}

static int dv_enum_framesizes(struct file *file, void *priv,
			      struct v4l2_frmsizeenum *fsize)
{
	if (fsize->index || !dv_find_coded(fsize->pixel_format))
		return -EINVAL;
	fsize->type = V4L2_FRMSIZE_TYPE_STEPWISE;
	fsize->stepwise.min_width = DV_MIN_SIZE;
	fsize->stepwise.max_width = DV_MAX_WIDTH;
	fsize->stepwise.step_width = 1;
	fsize->stepwise.min_height = DV_MIN_SIZE;
	fsize->stepwise.max_height = DV_MAX_HEIGHT;
	fsize->stepwise.step_height = 1;
	return 0;
}

const struct v4l2_ioctl_ops dv_ioctl_ops = {
	.vidioc_querycap		= dv_querycap,
	.vidioc_enum_framesizes		= dv_enum_framesizes,
	.vidioc_enum_fmt_vid_cap	= dv_enum_fmt_vid_cap,
	.vidioc_g_fmt_vid_cap_mplane	= dv_g_fmt_vid_cap,
	.vidioc_try_fmt_vid_cap_mplane	= dv_try_fmt_vid_cap,
	.vidioc_s_fmt_vid_cap_mplane	= dv_s_fmt_vid_cap,
	.vidioc_enum_fmt_vid_out	= dv_enum_fmt_vid_out,
	.vidioc_g_fmt_vid_out_mplane	= dv_g_fmt_vid_out,
	.vidioc_try_fmt_vid_out_mplane	= dv_try_fmt_vid_out,
	.vidioc_s_fmt_vid_out_mplane	= dv_s_fmt_vid_out,
	.vidioc_reqbufs			= v4l2_m2m_ioctl_reqbufs,
	.vidioc_querybuf		= v4l2_m2m_ioctl_querybuf,
	.vidioc_qbuf			= v4l2_m2m_ioctl_qbuf,
	.vidioc_dqbuf			= v4l2_m2m_ioctl_dqbuf,
	.vidioc_prepare_buf		= v4l2_m2m_ioctl_prepare_buf,
	.vidioc_create_bufs		= v4l2_m2m_ioctl_create_bufs,
	.vidioc_expbuf			= v4l2_m2m_ioctl_expbuf,
	.vidioc_remove_bufs		= v4l2_m2m_ioctl_remove_bufs,
	.vidioc_streamon		= v4l2_m2m_ioctl_streamon,
	.vidioc_streamoff		= v4l2_m2m_ioctl_streamoff,
	.vidioc_decoder_cmd		= v4l2_m2m_ioctl_stateless_decoder_cmd,
	.vidioc_try_decoder_cmd		= v4l2_m2m_ioctl_stateless_try_decoder_cmd,
	.vidioc_subscribe_event		= v4l2_ctrl_subscribe_event,
	.vidioc_unsubscribe_event	= v4l2_event_unsubscribe,
};

static const struct v4l2_pix_format_mplane *dv_q_fmt(struct vb2_queue *vq)
{
	struct dv_ctx *ctx = vb2_get_drv_priv(vq);

	return V4L2_TYPE_IS_OUTPUT(vq->type) ? &ctx->coded_fmt.fmt.pix_mp :
					       &ctx->decoded_fmt.fmt.pix_mp;
}

static int dv_queue_setup(struct vb2_queue *vq, unsigned int *nbuffers,
			  unsigned int *num_planes, unsigned int sizes[],
			  struct device *alloc_devs[])
{
	const struct v4l2_pix_format_mplane *pix = dv_q_fmt(vq);
	unsigned int i;

	if (*num_planes) {
		if (*num_planes != pix->num_planes)
			return -EINVAL;
		for (i = 0; i < pix->num_planes; i++)
			if (sizes[i] < pix->plane_fmt[i].sizeimage)
				return -EINVAL;
		return 0;
	}
	*num_planes = pix->num_planes;
	for (i = 0; i < pix->num_planes; i++)
		sizes[i] = pix->plane_fmt[i].sizeimage;
	return 0;
}

/* New memory: the daemon must be told about it again. */
static int dv_buf_init(struct vb2_buffer *vb)
{
	struct dv_ctx *ctx = vb2_get_drv_priv(vb->vb2_queue);
	unsigned long flags;

	spin_lock_irqsave(&ctx->dev->br.lock, flags);
	dv_vb2_to_buf(vb)->registered_gen = 0;
	spin_unlock_irqrestore(&ctx->dev->br.lock, flags);
	return 0;
}

/* The buffer's memory goes away: BUF_UNREGISTER if the daemon has it. */
static void dv_buf_cleanup(struct vb2_buffer *vb)
{
	struct dv_ctx *ctx = vb2_get_drv_priv(vb->vb2_queue);
	struct dv_buffer *buf = dv_vb2_to_buf(vb);
	struct dv_bridge *br = &ctx->dev->br;
	struct dv_buf_unregister u = {
		.ctx_id = ctx->id,
		.queue = V4L2_TYPE_IS_OUTPUT(vb->vb2_queue->type) ?
			 DV_QUEUE_OUTPUT : DV_QUEUE_CAPTURE,
		.index = vb->index,
	};
	struct dv_txmsg *msg;
	unsigned long flags;

	msg = dv_msg_alloc(DV_MSG_BUF_UNREGISTER, &u, sizeof(u), 0, GFP_KERNEL);
	spin_lock_irqsave(&br->lock, flags);
	if (msg && br->link != DV_LINK_DETACHED &&
	    buf->registered_gen == br->gen) {
		dv_bridge_queue_locked(br, msg);
		msg = NULL;
	}
	buf->registered_gen = 0;
	spin_unlock_irqrestore(&br->lock, flags);
	dv_msg_free(msg);
	wake_up_interruptible(&br->wq);
}

static int dv_buf_out_validate(struct vb2_buffer *vb)
{
	to_vb2_v4l2_buffer(vb)->field = V4L2_FIELD_NONE;
	return 0;
}

static int dv_buf_prepare(struct vb2_buffer *vb)
{
	const struct v4l2_pix_format_mplane *pix = dv_q_fmt(vb->vb2_queue);
	unsigned int i;

	if (vb->num_planes != pix->num_planes)
		return -EINVAL;
	for (i = 0; i < pix->num_planes; i++) {
		if (vb2_plane_size(vb, i) < pix->plane_fmt[i].sizeimage)
			return -EINVAL;
		if (!V4L2_TYPE_IS_OUTPUT(vb->vb2_queue->type))
			vb2_set_plane_payload(vb, i,
					      pix->plane_fmt[i].sizeimage);
	}
	return 0;
}

static void dv_buf_queue(struct vb2_buffer *vb)
{
	struct dv_ctx *ctx = vb2_get_drv_priv(vb->vb2_queue);

	v4l2_m2m_buf_queue(ctx->fh.m2m_ctx, to_vb2_v4l2_buffer(vb));
}

static void dv_buf_request_complete(struct vb2_buffer *vb)
{
	struct dv_ctx *ctx = vb2_get_drv_priv(vb->vb2_queue);

	v4l2_ctrl_request_complete(vb->req_obj.req, &ctx->hdl);
}

static int dv_start_streaming(struct vb2_queue *vq, unsigned int count)
{
	struct dv_ctx *ctx = vb2_get_drv_priv(vq);

	if (V4L2_TYPE_IS_OUTPUT(vq->type))
		ctx->out_seq = 0;
	else
		ctx->cap_seq = 0;
	return 0;
}

/*
 * STREAMOFF and close: v4l2-mem2mem has already cancelled the running job
 * (dv_job_abort completed it); every buffer still queued comes back with
 * an error and its request completes.
 */
static void dv_stop_streaming(struct vb2_queue *vq)
{
	struct dv_ctx *ctx = vb2_get_drv_priv(vq);
	struct vb2_v4l2_buffer *vbuf;

	for (;;) {
		if (V4L2_TYPE_IS_OUTPUT(vq->type))
			vbuf = v4l2_m2m_src_buf_remove(ctx->fh.m2m_ctx);
		else
			vbuf = v4l2_m2m_dst_buf_remove(ctx->fh.m2m_ctx);
		if (!vbuf)
			break;
		v4l2_ctrl_request_complete(vbuf->vb2_buf.req_obj.req,
					   &ctx->hdl);
		v4l2_m2m_buf_done(vbuf, VB2_BUF_STATE_ERROR);
	}
}

static const struct vb2_ops dv_qops = {
	.queue_setup		= dv_queue_setup,
	.buf_init		= dv_buf_init,
	.buf_cleanup		= dv_buf_cleanup,
	.buf_out_validate	= dv_buf_out_validate,
	.buf_prepare		= dv_buf_prepare,
	.buf_queue		= dv_buf_queue,
	.buf_request_complete	= dv_buf_request_complete,
	.start_streaming	= dv_start_streaming,
	.stop_streaming		= dv_stop_streaming,
	.wait_prepare		= vb2_ops_wait_prepare,
	.wait_finish		= vb2_ops_wait_finish,
};

/**
 * dv_queue_init() - the two vb2 queues of a new m2m context
 * @priv: the context
 * @src_vq: OUTPUT (bitstream) queue
 * @dst_vq: CAPTURE (picture) queue
 *
 * Memory is vmalloc: MMAP buffers reach the daemon as dmabufs exported
 * from it, DMABUF buffers as the imported dmabuf.
 *
 * Return: 0 or a negative errno.
 */
int dv_queue_init(void *priv, struct vb2_queue *src_vq,
		  struct vb2_queue *dst_vq)
{
	struct dv_ctx *ctx = priv;
	int ret;

	src_vq->type = V4L2_BUF_TYPE_VIDEO_OUTPUT_MPLANE;
	src_vq->io_modes = VB2_MMAP | VB2_DMABUF;
	src_vq->drv_priv = ctx;
	src_vq->buf_struct_size = sizeof(struct dv_buffer);
	src_vq->ops = &dv_qops;
	src_vq->mem_ops = &vb2_vmalloc_memops;
	src_vq->timestamp_flags = V4L2_BUF_FLAG_TIMESTAMP_COPY;
	src_vq->lock = &ctx->vb_mutex;
	/*
	 * Requests are optional, as with visl: a job without one runs with
	 * the current control values (v4l2-compliance's streaming tests queue
	 * OUTPUT buffers without requests).
	 */
	src_vq->supports_requests = true;
	src_vq->subsystem_flags |= VB2_V4L2_FL_SUPPORTS_M2M_HOLD_CAPTURE_BUF;
	ret = vb2_queue_init(src_vq);
	if (ret)
		return ret;

	dst_vq->type = V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE;
	dst_vq->io_modes = VB2_MMAP | VB2_DMABUF;
	dst_vq->drv_priv = ctx;
	dst_vq->buf_struct_size = sizeof(struct dv_buffer);
	dst_vq->ops = &dv_qops;
	dst_vq->mem_ops = &vb2_vmalloc_memops;
	dst_vq->timestamp_flags = V4L2_BUF_FLAG_TIMESTAMP_COPY;
	dst_vq->lock = &ctx->vb_mutex;
	return vb2_queue_init(dst_vq);
}

/**
 * dv_request_validate() - a request holds exactly one OUTPUT buffer
 * @req: the request being queued
 *
 * Return: 0, -ENOENT without a buffer, -EINVAL with several, or what
 * vb2_request_validate() returns.
 */
int dv_request_validate(struct media_request *req)
{
	unsigned int count = vb2_request_buffer_cnt(req);

	if (!count)
		return -ENOENT;
	if (count > 1)
		return -EINVAL;
	return vb2_request_validate(req);
}
