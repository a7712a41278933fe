/* SPDX-License-Identifier: (GPL-2.0 WITH Linux-syscall-note) OR BSD-2-Clause */
/*
 * daedalus-v4l2 kernel bridge: the character device /dev/daedalus-bridge
 * through which the decoding daemon talks to the kernel module.
 *
 * The datagrams are those of the bridge protocol (daedalus_v4l2_proto.h,
 * docs/protocol.md). One daemon at a time may open the device (O_RDWR); a
 * second open fails with EBUSY. Opening it is connecting: the module queues
 * DV_MSG_HELLO at once, and everything the module remembers about the
 * daemon (contexts opened, buffers registered) starts empty.
 *
 * Module -> daemon: poll() reports POLLIN while a datagram is queued;
 * DV_BRIDGE_IOC_RECV copies the next one to user memory and installs its
 * file descriptors (the dmabufs of a DV_MSG_BUF_REGISTER, one per plane,
 * close-on-exec) in the caller's file table. RECV never blocks: EAGAIN when
 * nothing is queued.
 *
 * Daemon -> module: one write() per datagram (HELLO_REPLY, RESULT,
 * CTX_STATUS), the whole datagram at once. A datagram the module rejects
 * (bad length, magic, version, kind, reserved field, status, flags) ends
 * the connection: write() fails with EPROTO and every job in flight on it
 * completes with an error.
 *
 * A connection that ended (protocol error, handshake or DISCONNECT) stays
 * dead until the file is closed: poll() reports POLLHUP, RECV and write()
 * fail with EPIPE. Close the file and open the device again to reconnect.
 */
#ifndef _DAEDALUS_BRIDGE_H
#define _DAEDALUS_BRIDGE_H

#include <linux/ioctl.h>
#include <linux/types.h>

#include "daedalus_v4l2_proto.h"

/* Name of the misc device: /dev/daedalus-bridge. */
#define DV_BRIDGE_NAME		"daedalus-bridge"

/**
 * struct dv_bridge_recv - argument of DV_BRIDGE_IOC_RECV
 * @buf:	in: user address receiving the datagram
 * @size:	in: bytes available at @buf (DV_MAX_MSG_SIZE always suffices)
 * @len:	out: length of the datagram copied
 * @num_fds:	out: file descriptors installed, at most DV_MAX_PLANES
 * @fds:	out: the descriptors, in the order of the datagram's fd_index
 * @reserved:	zero on input and output
 *
 * EMSGSIZE when @size is smaller than the next datagram (it stays queued),
 * EAGAIN when nothing is queued, EPIPE when the connection has ended.
 */
struct dv_bridge_recv {
	__u64 buf;
	__u32 size;
	__u32 len;
	__u32 num_fds;
	__s32 fds[DV_MAX_PLANES];
	__u32 reserved[3];
};

#define DV_BRIDGE_IOC_MAGIC	0xdb

/* Receives the next datagram (see struct dv_bridge_recv). */
#define DV_BRIDGE_IOC_RECV	_IOWR(DV_BRIDGE_IOC_MAGIC, 1, struct dv_bridge_recv)
/*
 * Ends this connection now, like a protocol error but without one: every
 * job in flight completes with an error, poll() reports POLLHUP. Used by a
 * daemon that shuts down while another of its threads waits in poll().
 */
#define DV_BRIDGE_IOC_DISCONNECT	_IO(DV_BRIDGE_IOC_MAGIC, 2)

#endif /* _DAEDALUS_BRIDGE_H */
