// SPDX-License-Identifier: GPL-2.0
/*
 * daedalus-v4l2: the bridge character device /dev/daedalus-bridge
 * (include/daedalus_bridge.h). One daemon at a time; opening it is
 * connecting (HELLO queued), closing it detaches the daemon: every job in
 * flight completes with an error, exactly once.
 *
 * Copyright (C) 2026 The daedalus-v4l2 authors
 */

#include <linux/dma-buf.h>
#include <linux/fcntl.h>
#include <linux/file.h>
#include <linux/jiffies.h>
#include <linux/mm.h>
#include <linux/poll.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "daedalus.h"

/* Features this frontend offers; the daemon must agree to DMABUF. */
#define DV_OFFERED_FEATURES	(DV_FEAT_DMABUF | DV_FEAT_CANCEL | \
				 DV_FEAT_HOLD_CAPTURE)

/* Largest datagram a daemon sends (RESULT). */
#define DV_MAX_RX_SIZE	(sizeof(struct dv_msg_header) + sizeof(struct dv_result))

static struct dv_dev *dv_misc_to_dev(struct file *file)
{
	struct miscdevice *misc = file->private_data;

	return container_of(misc, struct dv_dev, misc);
}

/**
 * dv_msg_alloc() - a zeroed datagram with its header and body filled
 * @kind: DV_MSG_*
 * @body: the fixed body
 * @body_len: its size
 * @extra: bytes after the body (DECODE controls), left zero
 * @gfp: allocation flags
 *
 * The sequence number is set when the datagram is queued.
 *
 * Return: the datagram or NULL.
 */
struct dv_txmsg *dv_msg_alloc(u16 kind, const void *body, size_t body_len,
			      size_t extra, gfp_t gfp)
{
	size_t len = sizeof(struct dv_msg_header) + body_len + extra;
	struct dv_msg_header hdr = {
		.magic = DV_MAGIC,
		.kind = kind,
		.version = DV_VERSION_MAJOR,
		.len = len,
	};
	struct dv_txmsg *msg;

	if (len > DV_MAX_MSG_SIZE)
		return NULL;
	msg = kvzalloc(struct_size(msg, data, len), gfp);
	if (!msg)
		return NULL;
	INIT_LIST_HEAD(&msg->node);
	msg->len = len;
	memcpy(msg->data, &hdr, sizeof(hdr));
	memcpy(msg->data + sizeof(hdr), body, body_len);
	return msg;
}

/**
 * dv_msg_free() - frees a datagram and drops the dmabufs it still holds
 * @msg: the datagram, or NULL
 */
void dv_msg_free(struct dv_txmsg *msg)
{
	unsigned int i;

	if (!msg)
		return;
	for (i = 0; i < msg->num_fds; i++)
		if (msg->dbufs[i])
			dma_buf_put(msg->dbufs[i]);
	kvfree(msg);
}

/**
 * dv_bridge_queue_locked() - appends a datagram to the transmit queue
 * @br: the bridge, locked
 * @msg: the datagram; the queue owns it from now on
 *
 * The caller wakes dv_bridge.wq once the lock is dropped.
 */
void dv_bridge_queue_locked(struct dv_bridge *br, struct dv_txmsg *msg)
{
	struct dv_msg_header *hdr = (struct dv_msg_header *)msg->data;

	lockdep_assert_held(&br->lock);
	hdr->seq = ++br->tx_seq;
	list_add_tail(&msg->node, &br->txq);
}

/**
 * dv_bridge_ctx_add() - gives a new context its id and lists it
 * @dev: the device
 * @ctx: the context
 */
void dv_bridge_ctx_add(struct dv_dev *dev, struct dv_ctx *ctx)
{
	unsigned long flags;

	spin_lock_irqsave(&dev->br.lock, flags);
	ctx->id = dev->br.next_ctx_id++;
	if (!dev->br.next_ctx_id)
		dev->br.next_ctx_id = 1;
	list_add_tail(&ctx->node, &dev->br.contexts);
	spin_unlock_irqrestore(&dev->br.lock, flags);
}

/**
 * dv_bridge_ctx_remove() - unlists a closed context, CTX_CLOSE to the daemon
 * @dev: the device
 * @ctx: the context, whose jobs have all completed
 */
void dv_bridge_ctx_remove(struct dv_dev *dev, struct dv_ctx *ctx)
{
	struct dv_ctx_close c = { .ctx_id = ctx->id };
	struct dv_txmsg *msg;
	struct dv_bridge *br = &dev->br;
	unsigned long flags;

	msg = dv_msg_alloc(DV_MSG_CTX_CLOSE, &c, sizeof(c), 0, GFP_KERNEL);
	spin_lock_irqsave(&br->lock, flags);
	list_del_init(&ctx->node);
	if (msg && br->link != DV_LINK_DETACHED && ctx->opened_gen == br->gen) {
		dv_bridge_queue_locked(br, msg);
		msg = NULL;
	}
	spin_unlock_irqrestore(&br->lock, flags);
	dv_msg_free(msg);
	wake_up_interruptible(&br->wq);
}

/**
 * dv_bridge_detach() - ends the daemon connection
 * @dev: the device
 * @why: logged
 *
 * Unsent datagrams are dropped, zombies forgotten and every active job
 * completes with an error, exactly once (the #146 hang: otherwise close()
 * waits in v4l2_m2m_cancel_job forever). Idempotent. Process context.
 */
void dv_bridge_detach(struct dv_dev *dev, const char *why)
{
	struct dv_bridge *br = &dev->br;
	struct dv_txmsg *msg, *mtmp;
	struct dv_job *j, *jtmp;
	LIST_HEAD(unsent);
	LIST_HEAD(active);
	unsigned long flags;
	unsigned int drained = 0;
	struct dv_stats st;

	spin_lock_irqsave(&br->lock, flags);
	if (br->link == DV_LINK_DETACHED) {
		spin_unlock_irqrestore(&br->lock, flags);
		return;
	}
	br->link = DV_LINK_DETACHED;
	list_splice_init(&br->txq, &unsent);
	list_for_each_entry_safe(j, jtmp, &br->inflight, node) {
		list_del(&j->node);
		if (j->ctx)
			list_add_tail(&j->node, &active);
		else
			kfree(j);
	}
	spin_unlock_irqrestore(&br->lock, flags);

	wake_up_interruptible(&br->wq);
	list_for_each_entry_safe(msg, mtmp, &unsent, node) {
		list_del(&msg->node);
		dv_msg_free(msg);
	}
	list_for_each_entry_safe(j, jtmp, &active, node) {
		list_del(&j->node);
		dv_job_complete(j->ctx, VB2_BUF_STATE_ERROR, NULL);
		kfree(j);
		drained++;
	}
	spin_lock_irqsave(&br->lock, flags);
	st = br->stats;
	spin_unlock_irqrestore(&br->lock, flags);
	dev_info(dev->v4l2_dev.dev,
		 "daemon detached (%s): %u jobs in flight failed; fail-fast %llu, timeouts %llu, errors %llu, unknown %llu, foreign %llu, zombie acks %llu\n",
		 why, drained, st.fail_fast, st.timeouts, st.errors, st.unknown,
		 st.foreign, st.zombie_acks);
}

static int dv_bridge_open(struct inode *inode, struct file *file)
{
	struct dv_dev *dev = dv_misc_to_dev(file);
	struct dv_bridge *br = &dev->br;
	struct dv_hello hello = {
		.version_major = DV_VERSION_MAJOR,
		.version_minor = DV_VERSION_MINOR,
		.max_inflight = 1,
		.features = DV_OFFERED_FEATURES,
		.max_msg_size = DV_MAX_MSG_SIZE,
	};
	struct dv_txmsg *msg;
	unsigned long flags;

	if ((file->f_flags & O_ACCMODE) != O_RDWR)
		return -EACCES;
	msg = dv_msg_alloc(DV_MSG_HELLO, &hello, sizeof(hello), 0, GFP_KERNEL);
	if (!msg)
		return -ENOMEM;
	spin_lock_irqsave(&br->lock, flags);
	if (br->file_open) {
		spin_unlock_irqrestore(&br->lock, flags);
		dv_msg_free(msg);
		return -EBUSY;
	}
	br->file_open = true;
	br->gen++;
	br->link = DV_LINK_HANDSHAKING;
	br->handshake_deadline = jiffies + msecs_to_jiffies(dv_job_timeout_ms);
	dv_bridge_queue_locked(br, msg);
	mod_delayed_work(system_wq, &br->watchdog,
			 msecs_to_jiffies(dv_job_timeout_ms));
	spin_unlock_irqrestore(&br->lock, flags);
	wake_up_interruptible(&br->wq);
	return stream_open(inode, file);
}

static int dv_bridge_release(struct inode *inode, struct file *file)
{
	struct dv_dev *dev = dv_misc_to_dev(file);
	unsigned long flags;

	dv_bridge_detach(dev, "bridge closed");
	spin_lock_irqsave(&dev->br.lock, flags);
	dev->br.file_open = false;
	spin_unlock_irqrestore(&dev->br.lock, flags);
	return 0;
}

static __poll_t dv_bridge_poll(struct file *file, poll_table *wait)
{
	struct dv_bridge *br = &dv_misc_to_dev(file)->br;
	unsigned long flags;
	__poll_t mask = 0;

	poll_wait(file, &br->wq, wait);
	spin_lock_irqsave(&br->lock, flags);
	if (br->link == DV_LINK_DETACHED) {
		mask = EPOLLHUP | EPOLLERR;
	} else {
		mask = EPOLLOUT | EPOLLWRNORM;
		if (!list_empty(&br->txq))
			mask |= EPOLLIN | EPOLLRDNORM;
	}
	spin_unlock_irqrestore(&br->lock, flags);
	return mask;
}

/* Applies a RESULT: completes its job, or counts why it is ignored. */
static void dv_bridge_result(struct dv_dev *dev, const struct dv_result *res)
{
	struct dv_bridge *br = &dev->br;
	struct dv_job *j, *found = NULL;
	struct dv_ctx *ctx = NULL;
	unsigned long flags;

	spin_lock_irqsave(&br->lock, flags);
	list_for_each_entry(j, &br->inflight, node) {
		if (j->cookie == res->cookie) {
			found = j;
			break;
		}
	}
	if (!found) {
		br->stats.unknown++;
	} else if (found->ctx_id != res->ctx_id) {
		br->stats.foreign++;
		found = NULL;
	} else {
		list_del(&found->node);
		ctx = found->ctx;
		if (!ctx)
			br->stats.zombie_acks++;
	}
	spin_unlock_irqrestore(&br->lock, flags);
	if (ctx)
		dv_job_complete(ctx, res->status == DV_STATUS_DONE ?
				VB2_BUF_STATE_DONE : VB2_BUF_STATE_ERROR, res);
	kfree(found);
}

/* CTX_STATUS: the daemon cannot serve a context; its jobs fail at once. */
static void dv_bridge_ctx_status(struct dv_dev *dev,
				 const struct dv_ctx_status *st)
{
	struct dv_bridge *br = &dev->br;
	unsigned long flags;
	struct dv_ctx *ctx;

	spin_lock_irqsave(&br->lock, flags);
	list_for_each_entry(ctx, &br->contexts, node) {
		if (ctx->id == st->ctx_id) {
			ctx->refused_gen = br->gen;
			break;
		}
	}
	spin_unlock_irqrestore(&br->lock, flags);
}

/*
 * Validates and applies one datagram of the daemon. Returns NULL, or why
 * it is malformed or unexpected (the connection then ends).
 */
static const char *dv_bridge_receive(struct dv_dev *dev, const u8 *buf,
				     size_t count)
{
	struct dv_bridge *br = &dev->br;
	struct dv_msg_header hdr;
	const u8 *body = buf + sizeof(hdr);
	size_t body_len = count - sizeof(hdr);
	unsigned long flags;
	enum dv_link link;

	if (count < sizeof(hdr))
		return "short datagram";
	memcpy(&hdr, buf, sizeof(hdr));
	if (hdr.magic != DV_MAGIC)
		return "bad magic";
	if (hdr.version != DV_VERSION_MAJOR)
		return "bad version";
	if (hdr.len != count)
		return "length differs from the datagram";

	spin_lock_irqsave(&br->lock, flags);
	link = br->link;
	spin_unlock_irqrestore(&br->lock, flags);

	switch (hdr.kind) {
	case DV_MSG_HELLO_REPLY: {
		struct dv_hello h;

		if (body_len != sizeof(h))
			return "bad HELLO_REPLY size";
		memcpy(&h, body, sizeof(h));
		if (link != DV_LINK_HANDSHAKING)
			return "unexpected HELLO_REPLY";
		if (h.version_major != DV_VERSION_MAJOR || h.reserved)
			return "bad HELLO_REPLY";
		if (h.features & ~DV_OFFERED_FEATURES)
			return "HELLO_REPLY agrees to features not offered";
		if (!(h.features & DV_FEAT_DMABUF))
			return "daemon does not take dmabufs";
		spin_lock_irqsave(&br->lock, flags);
		if (br->link == DV_LINK_HANDSHAKING)
			br->link = DV_LINK_ATTACHED;
		spin_unlock_irqrestore(&br->lock, flags);
		dev_info(dev->v4l2_dev.dev, "daemon attached (features %#llx)\n",
			 (unsigned long long)h.features);
		return NULL;
	}
	case DV_MSG_RESULT: {
		struct dv_result r;

		if (body_len != sizeof(r))
			return "bad RESULT size";
		memcpy(&r, body, sizeof(r));
		if (link != DV_LINK_ATTACHED)
			return "RESULT before HELLO_REPLY";
		if (r.status > DV_STATUS_ERROR ||
		    (r.status == DV_STATUS_DONE && r.error) ||
		    (r.flags & ~DV_RESULT_ALL))
			return "bad RESULT";
		dv_bridge_result(dev, &r);
		return NULL;
	}
	case DV_MSG_CTX_STATUS: {
		struct dv_ctx_status s;

		if (body_len != sizeof(s))
			return "bad CTX_STATUS size";
		memcpy(&s, body, sizeof(s));
		if (link != DV_LINK_ATTACHED)
			return "CTX_STATUS before HELLO_REPLY";
		dv_bridge_ctx_status(dev, &s);
		return NULL;
	}
	default:
		return "unexpected message kind";
	}
}

static bool dv_bridge_dead(struct dv_bridge *br)
{
	unsigned long flags;
	bool dead;

	spin_lock_irqsave(&br->lock, flags);
	dead = br->link == DV_LINK_DETACHED;
	spin_unlock_irqrestore(&br->lock, flags);
	return dead;
}

static ssize_t dv_bridge_write(struct file *file, const char __user *ubuf,
			       size_t count, loff_t *ppos)
{
	struct dv_dev *dev = dv_misc_to_dev(file);
	u8 buf[DV_MAX_RX_SIZE];
	const char *why;

	if (dv_bridge_dead(&dev->br))
		return -EPIPE;
	if (count > sizeof(buf)) {
		dv_bridge_detach(dev, "datagram from the daemon too large");
		return -EPROTO;
	}
	if (copy_from_user(buf, ubuf, count))
		return -EFAULT;
	why = dv_bridge_receive(dev, buf, count);
	if (why) {
		dev_warn(dev->v4l2_dev.dev, "daemon protocol error: %s\n", why);
		dv_bridge_detach(dev, why);
		return -EPROTO;
	}
	return count;
}

static long dv_bridge_recv(struct dv_dev *dev, void __user *uarg)
{
	struct dv_bridge *br = &dev->br;
	struct dv_bridge_recv arg;
	int fds[DV_MAX_PLANES];
	struct dv_txmsg *msg;
	unsigned long flags;
	unsigned int i, nfds = 0;
	long ret;

	if (copy_from_user(&arg, uarg, sizeof(arg)))
		return -EFAULT;
	if (arg.reserved[0] || arg.reserved[1] || arg.reserved[2])
		return -EINVAL;

	mutex_lock(&br->recv_mutex);
	spin_lock_irqsave(&br->lock, flags);
	if (br->link == DV_LINK_DETACHED) {
		ret = -EPIPE;
		goto unlock;
	}
	msg = list_first_entry_or_null(&br->txq, struct dv_txmsg, node);
	if (!msg) {
		ret = -EAGAIN;
		goto unlock;
	}
	if (msg->len > arg.size) {
		ret = -EMSGSIZE;
		goto unlock;
	}
	/* Ours now: a detach cannot free it under us. */
	list_del_init(&msg->node);
	spin_unlock_irqrestore(&br->lock, flags);

	for (nfds = 0; nfds < msg->num_fds; nfds++) {
		fds[nfds] = get_unused_fd_flags(O_CLOEXEC);
		if (fds[nfds] < 0) {
			ret = fds[nfds];
			goto requeue;
		}
	}
	arg.len = msg->len;
	arg.num_fds = msg->num_fds;
	memset(arg.fds, 0xff, sizeof(arg.fds));
	for (i = 0; i < nfds; i++)
		arg.fds[i] = fds[i];
	if (copy_to_user(u64_to_user_ptr(arg.buf), msg->data, msg->len) ||
	    copy_to_user(uarg, &arg, sizeof(arg))) {
		ret = -EFAULT;
		goto requeue;
	}
	/* Past the point of failure: the fds take over our references. */
	for (i = 0; i < nfds; i++) {
		fd_install(fds[i], msg->dbufs[i]->file);
		msg->dbufs[i] = NULL;
	}
	mutex_unlock(&br->recv_mutex);
	dv_msg_free(msg);
	return 0;

requeue:
	while (nfds--)
		put_unused_fd(fds[nfds]);
	spin_lock_irqsave(&br->lock, flags);
	if (br->link != DV_LINK_DETACHED) {
		list_add(&msg->node, &br->txq);
		msg = NULL;
	}
	spin_unlock_irqrestore(&br->lock, flags);
	mutex_unlock(&br->recv_mutex);
	dv_msg_free(msg);
	return ret;

unlock:
	spin_unlock_irqrestore(&br->lock, flags);
	mutex_unlock(&br->recv_mutex);
	return ret;
}

static long dv_bridge_ioctl(struct file *file, unsigned int cmd,
			    unsigned long arg)
{
	struct dv_dev *dev = dv_misc_to_dev(file);

	switch (cmd) {
	case DV_BRIDGE_IOC_RECV:
		return dv_bridge_recv(dev, (void __user *)arg);
	case DV_BRIDGE_IOC_DISCONNECT:
		dv_bridge_detach(dev, "daemon disconnected");
		return 0;
	default:
		return -ENOTTY;
	}
}

static const struct file_operations dv_bridge_fops = {
	.owner		= THIS_MODULE,
	.open		= dv_bridge_open,
	.release	= dv_bridge_release,
	.write		= dv_bridge_write,
	.poll		= dv_bridge_poll,
	.unlocked_ioctl	= dv_bridge_ioctl,
	.compat_ioctl	= compat_ptr_ioctl,
};

/**
 * dv_bridge_register() - creates /dev/daedalus-bridge (mode 0600)
 * @dev: the device
 *
 * Return: 0 or a negative errno.
 */
int dv_bridge_register(struct dv_dev *dev)
{
	dev->misc.minor = MISC_DYNAMIC_MINOR;
	dev->misc.name = DV_BRIDGE_NAME;
	dev->misc.fops = &dv_bridge_fops;
	dev->misc.mode = 0600;
	return misc_register(&dev->misc);
}

/**
 * dv_bridge_unregister() - removes the bridge device and stops the watchdog
 * @dev: the device (no file of the module is open)
 */
void dv_bridge_unregister(struct dv_dev *dev)
{
	misc_deregister(&dev->misc);
	cancel_delayed_work_sync(&dev->br.watchdog);
}
