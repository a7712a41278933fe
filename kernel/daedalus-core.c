// SPDX-License-Identifier: GPL-2.0
/*
 * daedalus-v4l2: a V4L2 stateless decoder (the uAPI of visl, hantro,
 * cedrus: media requests, per-frame codec controls, mem2mem) whose decoding
 * runs in a userspace daemon reached through /dev/daedalus-bridge.
 *
 * This file: module and platform device, the video and media nodes, opening
 * and closing contexts, the control templates of each codec.
 *
 * Copyright (C) 2026 The daedalus-v4l2 authors
 */

#include <linux/module.h>
#include <linux/platform_device.h>
#include <linux/slab.h>
#include <media/v4l2-event.h>
#include <media/v4l2-ioctl.h>

#include "daedalus.h"

unsigned int dv_job_timeout_ms = 2000;
module_param_named(job_timeout_ms, dv_job_timeout_ms, uint, 0644);
MODULE_PARM_DESC(job_timeout_ms,
		 "deadline of a job (and of the daemon's handshake) in ms");

static const struct v4l2_ctrl_config dv_h264_ctrls[] = {
	{
		.id = V4L2_CID_STATELESS_H264_DECODE_MODE,
		.min = V4L2_STATELESS_H264_DECODE_MODE_SLICE_BASED,
		.max = V4L2_STATELESS_H264_DECODE_MODE_FRAME_BASED,
		.def = V4L2_STATELESS_H264_DECODE_MODE_SLICE_BASED,
	},
	{
		.id = V4L2_CID_STATELESS_H264_START_CODE,
		.min = V4L2_STATELESS_H264_START_CODE_NONE,
		.max = V4L2_STATELESS_H264_START_CODE_ANNEX_B,
		.def = V4L2_STATELESS_H264_START_CODE_ANNEX_B,
	},
	{ .id = V4L2_CID_STATELESS_H264_SPS, },
	{ .id = V4L2_CID_STATELESS_H264_PPS, },
	{ .id = V4L2_CID_STATELESS_H264_SCALING_MATRIX, },
	{ .id = V4L2_CID_STATELESS_H264_PRED_WEIGHTS, },
	{ .id = V4L2_CID_STATELESS_H264_SLICE_PARAMS, },
	{ .id = V4L2_CID_STATELESS_H264_DECODE_PARAMS, },
};

static const struct v4l2_ctrl_config dv_hevc_ctrls[] = {
	{ .id = V4L2_CID_STATELESS_HEVC_SPS, },
	{ .id = V4L2_CID_STATELESS_HEVC_PPS, },
	{
		.id = V4L2_CID_STATELESS_HEVC_SLICE_PARAMS,
		.dims = { 600 },
	},
	{ .id = V4L2_CID_STATELESS_HEVC_SCALING_MATRIX, },
	{ .id = V4L2_CID_STATELESS_HEVC_DECODE_PARAMS, },
	{
		.id = V4L2_CID_STATELESS_HEVC_DECODE_MODE,
		.min = V4L2_STATELESS_HEVC_DECODE_MODE_SLICE_BASED,
		.max = V4L2_STATELESS_HEVC_DECODE_MODE_FRAME_BASED,
		.def = V4L2_STATELESS_HEVC_DECODE_MODE_SLICE_BASED,
	},
	{
		.id = V4L2_CID_STATELESS_HEVC_START_CODE,
		.min = V4L2_STATELESS_HEVC_START_CODE_NONE,
		.max = V4L2_STATELESS_HEVC_START_CODE_ANNEX_B,
		.def = V4L2_STATELESS_HEVC_START_CODE_NONE,
	},
	{
		.id = V4L2_CID_STATELESS_HEVC_ENTRY_POINT_OFFSETS,
		.dims = { 256 },
		.max = 0xffffffff,
		.step = 1,
	},
};

static const struct v4l2_ctrl_config dv_vp8_ctrls[] = {
	{ .id = V4L2_CID_STATELESS_VP8_FRAME, },
};

static const struct v4l2_ctrl_config dv_vp9_ctrls[] = {
	{ .id = V4L2_CID_STATELESS_VP9_FRAME, },
	{ .id = V4L2_CID_STATELESS_VP9_COMPRESSED_HDR, },
};

static const struct v4l2_ctrl_config dv_av1_ctrls[] = {
	{ .id = V4L2_CID_STATELESS_AV1_FRAME, },
	{
		.id = V4L2_CID_STATELESS_AV1_TILE_GROUP_ENTRY,
		.dims = { V4L2_AV1_MAX_TILE_COUNT },
	},
	{ .id = V4L2_CID_STATELESS_AV1_SEQUENCE, },
	{ .id = V4L2_CID_STATELESS_AV1_FILM_GRAIN, },
};

const struct dv_coded_format dv_coded_formats[] = {
	{
		.fourcc = V4L2_PIX_FMT_H264_SLICE,
		.codec = DV_CODEC_H264,
		.ctrls = dv_h264_ctrls,
		.num_ctrls = ARRAY_SIZE(dv_h264_ctrls),
	},
	{
		.fourcc = V4L2_PIX_FMT_HEVC_SLICE,
		.codec = DV_CODEC_HEVC,
		.ctrls = dv_hevc_ctrls,
		.num_ctrls = ARRAY_SIZE(dv_hevc_ctrls),
	},
	{
		.fourcc = V4L2_PIX_FMT_VP8_FRAME,
		.codec = DV_CODEC_VP8,
		.ctrls = dv_vp8_ctrls,
		.num_ctrls = ARRAY_SIZE(dv_vp8_ctrls),
	},
	{
		.fourcc = V4L2_PIX_FMT_VP9_FRAME,
		.codec = DV_CODEC_VP9,
		.ctrls = dv_vp9_ctrls,
		.num_ctrls = ARRAY_SIZE(dv_vp9_ctrls),
	},
	{
		.fourcc = V4L2_PIX_FMT_AV1_FRAME,
		.codec = DV_CODEC_AV1,
		.ctrls = dv_av1_ctrls,
		.num_ctrls = ARRAY_SIZE(dv_av1_ctrls),
	},
};

const unsigned int dv_num_coded_formats = ARRAY_SIZE(dv_coded_formats);

static_assert(ARRAY_SIZE(dv_coded_formats) == DV_NUM_CODECS);
static_assert(ARRAY_SIZE(dv_h264_ctrls) <= DV_MAX_CODEC_CTRLS);
static_assert(ARRAY_SIZE(dv_hevc_ctrls) <= DV_MAX_CODEC_CTRLS);

static int dv_init_ctrls(struct dv_ctx *ctx)
{
	struct v4l2_ctrl_handler *hdl = &ctx->hdl;
	unsigned int i, j, count = 0;

	for (i = 0; i < dv_num_coded_formats; i++)
		count += dv_coded_formats[i].num_ctrls;
	v4l2_ctrl_handler_init(hdl, count);
	for (i = 0; i < dv_num_coded_formats; i++)
		for (j = 0; j < dv_coded_formats[i].num_ctrls; j++)
			ctx->ctrls[i][j] =
				v4l2_ctrl_new_custom(hdl,
						     &dv_coded_formats[i].ctrls[j],
						     NULL);
	if (hdl->error) {
		int ret = hdl->error;

		v4l2_ctrl_handler_free(hdl);
		return ret;
	}
	ctx->fh.ctrl_handler = hdl;
	return v4l2_ctrl_handler_setup(hdl);
}

static int dv_open(struct file *file)
{
	struct dv_dev *dev = video_drvdata(file);
	struct dv_ctx *ctx;
	int ret;

	if (mutex_lock_interruptible(&dev->dev_mutex))
		return -ERESTARTSYS;
	ctx = kzalloc(sizeof(*ctx), GFP_KERNEL);
	if (!ctx) {
		ret = -ENOMEM;
		goto unlock;
	}
	ctx->dev = dev;
	mutex_init(&ctx->vb_mutex);
	INIT_LIST_HEAD(&ctx->node);
	v4l2_fh_init(&ctx->fh, video_devdata(file));
	file->private_data = &ctx->fh;

	ret = dv_init_ctrls(ctx);
	if (ret)
		goto free_ctx;
	dv_set_default_format(ctx);
	ctx->fh.m2m_ctx = v4l2_m2m_ctx_init(dev->m2m_dev, ctx, dv_queue_init);
	if (IS_ERR(ctx->fh.m2m_ctx)) {
		ret = PTR_ERR(ctx->fh.m2m_ctx);
		goto free_hdl;
	}
	dv_bridge_ctx_add(dev, ctx);
	v4l2_fh_add(&ctx->fh);
	mutex_unlock(&dev->dev_mutex);
	return 0;

free_hdl:
	v4l2_ctrl_handler_free(&ctx->hdl);
free_ctx:
	v4l2_fh_exit(&ctx->fh);
	mutex_destroy(&ctx->vb_mutex);
	kfree(ctx);
unlock:
	mutex_unlock(&dev->dev_mutex);
	return ret;
}

static int dv_release(struct file *file)
{
	struct dv_dev *dev = video_drvdata(file);
	struct dv_ctx *ctx = dv_file_to_ctx(file);

	v4l2_fh_del(&ctx->fh);
	mutex_lock(&dev->dev_mutex);
	/*
	 * Cancels the running job (dv_job_abort completes it at once) and
	 * returns every buffer before the controls go away: completing a job
	 * needs the control handler.
	 */
	v4l2_m2m_ctx_release(ctx->fh.m2m_ctx);
	mutex_unlock(&dev->dev_mutex);
	dv_bridge_ctx_remove(dev, ctx);
	v4l2_ctrl_handler_free(&ctx->hdl);
	v4l2_fh_exit(&ctx->fh);
	mutex_destroy(&ctx->vb_mutex);
	kfree(ctx);
	return 0;
}

static const struct v4l2_file_operations dv_fops = {
	.owner		= THIS_MODULE,
	.open		= dv_open,
	.release	= dv_release,
	.poll		= v4l2_m2m_fop_poll,
	.unlocked_ioctl	= video_ioctl2,
	.mmap		= v4l2_m2m_fop_mmap,
};

static void dv_vdev_release(struct video_device *vdev)
{
	struct dv_dev *dev = container_of(vdev, struct dv_dev, vfd);

	v4l2_device_unregister(&dev->v4l2_dev);
	v4l2_m2m_release(dev->m2m_dev);
	media_device_cleanup(&dev->mdev);
	mutex_destroy(&dev->dev_mutex);
	mutex_destroy(&dev->br.recv_mutex);
	kfree(dev);
}

static const struct video_device dv_videodev = {
	.name		= DV_NAME,
	.vfl_dir	= VFL_DIR_M2M,
	.fops		= &dv_fops,
	.ioctl_ops	= &dv_ioctl_ops,
	.minor		= -1,
	.release	= dv_vdev_release,
	.device_caps	= V4L2_CAP_VIDEO_M2M_MPLANE | V4L2_CAP_STREAMING,
};

static const struct v4l2_m2m_ops dv_m2m_ops = {
	.device_run	= dv_device_run,
	.job_abort	= dv_job_abort,
};

static const struct media_device_ops dv_media_ops = {
	.req_validate	= dv_request_validate,
	.req_queue	= v4l2_m2m_request_queue,
};

static int dv_probe(struct platform_device *pdev)
{
	struct dv_dev *dev;
	int ret;

	dev = kzalloc(sizeof(*dev), GFP_KERNEL);
	if (!dev)
		return -ENOMEM;
	mutex_init(&dev->dev_mutex);
	spin_lock_init(&dev->br.lock);
	mutex_init(&dev->br.recv_mutex);
	INIT_LIST_HEAD(&dev->br.txq);
	INIT_LIST_HEAD(&dev->br.inflight);
	INIT_LIST_HEAD(&dev->br.contexts);
	init_waitqueue_head(&dev->br.wq);
	INIT_DELAYED_WORK(&dev->br.watchdog, dv_watchdog_fn);
	dev->br.next_cookie = 1;
	dev->br.next_ctx_id = 1;

	ret = v4l2_device_register(&pdev->dev, &dev->v4l2_dev);
	if (ret)
		goto free_dev;

	dev->m2m_dev = v4l2_m2m_init(&dv_m2m_ops);
	if (IS_ERR(dev->m2m_dev)) {
		ret = PTR_ERR(dev->m2m_dev);
		goto unreg_v4l2;
	}

	dev->mdev.dev = &pdev->dev;
	strscpy(dev->mdev.model, DV_NAME, sizeof(dev->mdev.model));
	strscpy(dev->mdev.bus_info, DV_BUS_INFO, sizeof(dev->mdev.bus_info));
	media_device_init(&dev->mdev);
	dev->mdev.ops = &dv_media_ops;
	dev->v4l2_dev.mdev = &dev->mdev;

	dev->vfd = dv_videodev;
	dev->vfd.lock = &dev->dev_mutex;
	dev->vfd.v4l2_dev = &dev->v4l2_dev;
	video_set_drvdata(&dev->vfd, dev);
	platform_set_drvdata(pdev, dev);

	ret = video_register_device(&dev->vfd, VFL_TYPE_VIDEO, -1);
	if (ret)
		goto cleanup_mdev;

	/* From here on, dv_vdev_release frees everything above. */
	ret = v4l2_m2m_register_media_controller(dev->m2m_dev, &dev->vfd,
						 MEDIA_ENT_F_PROC_VIDEO_DECODER);
	if (ret)
		goto unreg_vdev;
	ret = media_device_register(&dev->mdev);
	if (ret)
		goto unreg_mc;
	ret = dv_bridge_register(dev);
	if (ret)
		goto unreg_mdev;

	v4l2_info(&dev->v4l2_dev, "video node /dev/video%d, bridge /dev/%s\n",
		  dev->vfd.num, DV_BRIDGE_NAME);
	return 0;

unreg_mdev:
	media_device_unregister(&dev->mdev);
unreg_mc:
	v4l2_m2m_unregister_media_controller(dev->m2m_dev);
unreg_vdev:
	video_unregister_device(&dev->vfd);
	return ret;

cleanup_mdev:
	media_device_cleanup(&dev->mdev);
	v4l2_m2m_release(dev->m2m_dev);
unreg_v4l2:
	v4l2_device_unregister(&dev->v4l2_dev);
free_dev:
	mutex_destroy(&dev->br.recv_mutex);
	mutex_destroy(&dev->dev_mutex);
	kfree(dev);
	return ret;
}

static void dv_remove(struct platform_device *pdev)
{
	struct dv_dev *dev = platform_get_drvdata(pdev);

	dv_bridge_unregister(dev);
	media_device_unregister(&dev->mdev);
	v4l2_m2m_unregister_media_controller(dev->m2m_dev);
	video_unregister_device(&dev->vfd);
}

static struct platform_driver dv_pdrv = {
	.probe		= dv_probe,
	.remove		= dv_remove,
	.driver		= {
		.name	= DV_NAME,
		/* Only module unload removes the device: files pin the module. */
		.suppress_bind_attrs = true,
	},
};

static struct platform_device *dv_pdev;

static int __init dv_init(void)
{
	int ret;

	ret = platform_driver_register(&dv_pdrv);
	if (ret)
		return ret;
	dv_pdev = platform_device_register_simple(DV_NAME, PLATFORM_DEVID_NONE,
						  NULL, 0);
	if (IS_ERR(dv_pdev)) {
		platform_driver_unregister(&dv_pdrv);
		return PTR_ERR(dv_pdev);
	}
	return 0;
}

static void __exit dv_exit(void)
{
	platform_device_unregister(dv_pdev);
	platform_driver_unregister(&dv_pdrv);
}

module_init(dv_init);
module_exit(dv_exit);

MODULE_DESCRIPTION("daedalus-v4l2 stateless decoder with a userspace decoding daemon");
MODULE_AUTHOR("The daedalus-v4l2 authors");
MODULE_LICENSE("GPL");
MODULE_IMPORT_NS(DMA_BUF);
