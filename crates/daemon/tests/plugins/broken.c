/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * C plugins for the daemon's plugin loader tests, one per -D variant:
 *
 *   (none)              a valid ABI 1.0 plugin decoding HEVC only: every
 *                       picture is mid-grey (Y 0x10, CbCr 0x80), key frames
 *   PLUGIN_NEWER_MINOR  as above, announcing a newer minor with a longer
 *                       descriptor (fields appended), which a 1.0 host loads
 *   PLUGIN_WRONG_MAJOR  announces ABI major + 1
 *   PLUGIN_NO_ENTRY     exports the entry point under another name
 *   PLUGIN_REFUSE       the entry point returns NULL
 *   PLUGIN_NULL_DECODE  descriptor without a decode function
 *   PLUGIN_NULL_NAME    descriptor without a name
 *   PLUGIN_SHORT        struct_size smaller than ABI 1.0's descriptor
 *   PLUGIN_UNRESOLVED   needs a function no library defines
 *
 * Built by crates/daemon/tests/plugins/mod.rs with cc -shared.
 */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "daedalus_backend.h"

struct daedalus_session {
	struct daedalus_session_params params;
};

static int32_t create(const struct daedalus_session_params *params,
		      struct daedalus_session **session)
{
	struct daedalus_session *s;

	if (params->codec != DAEDALUS_CODEC_HEVC)
		return -EOPNOTSUPP;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	memcpy(&s->params, params, sizeof(s->params));
	*session = s;
	return 0;
}

#ifdef PLUGIN_UNRESOLVED
void daedalus_test_undefined_function(void);
#endif

/* Unused in the PLUGIN_NULL_DECODE variant. */
__attribute__((unused))
static int32_t decode(struct daedalus_session *session,
		      const struct daedalus_job *job,
		      const struct daedalus_capture *capture,
		      struct daedalus_decode_result *result)
{
	uint32_t bps = capture->fourcc == DAEDALUS_FOURCC_P010 ? 2 : 1;
	uint32_t rows[2] = { capture->height, (capture->height + 1) / 2 };
	uint32_t row_bytes[2] = { capture->width * bps,
				  (capture->width + 1) / 2 * 2 * bps };
	uint16_t value[2] = { 0x10, 0x80 };
	uint32_t i, y, x;

	(void)session;
#ifdef PLUGIN_UNRESOLVED
	daedalus_test_undefined_function();
#endif
	if (job->flags & DAEDALUS_JOB_MORE_SLICES)
		return DAEDALUS_HELD;
	for (i = 0; i < 2; i++) {
		const struct daedalus_plane *p = &capture->planes[i];
		uint64_t need = rows[i] ? (uint64_t)(rows[i] - 1) * p->stride + row_bytes[i] : 0;

		if (p->stride < row_bytes[i] || p->length < need)
			return -ENOSPC;
		for (y = 0; y < rows[i]; y++) {
			uint8_t *row = p->data + (size_t)y * p->stride;

			if (bps == 1) {
				memset(row, value[i], row_bytes[i]);
				continue;
			}
			for (x = 0; x < row_bytes[i]; x += 2) {
				uint16_t v = (uint16_t)(value[i] << 8);

				row[x] = (uint8_t)(v & 0xff);
				row[x + 1] = (uint8_t)(v >> 8);
			}
		}
		result->bytes_written[i] = need;
	}
	result->flags = DAEDALUS_RESULT_KEYFRAME;
	strncpy(result->message, "c plugin", DAEDALUS_MESSAGE_SIZE - 1);
	return DAEDALUS_DECODED;
}

static void reset(struct daedalus_session *session)
{
	(void)session;
}

static void destroy(struct daedalus_session *session)
{
	free(session);
}

/* A descriptor of a later 1.x minor: the 1.0 fields, then appended ones. */
struct backend_later_minor {
	struct daedalus_backend base;
	uint64_t appended_feature;
	const void *appended_pointer;
};

static const struct backend_later_minor descriptor = {
	.base = {
#ifdef PLUGIN_WRONG_MAJOR
		.abi_major = DAEDALUS_BACKEND_ABI_MAJOR + 1,
#else
		.abi_major = DAEDALUS_BACKEND_ABI_MAJOR,
#endif
#ifdef PLUGIN_NEWER_MINOR
		.abi_minor = DAEDALUS_BACKEND_ABI_MINOR + 3,
		.struct_size = sizeof(struct backend_later_minor),
#elif defined(PLUGIN_SHORT)
		.abi_minor = DAEDALUS_BACKEND_ABI_MINOR,
		.struct_size = offsetof(struct daedalus_backend, destroy),
#else
		.abi_minor = DAEDALUS_BACKEND_ABI_MINOR,
		.struct_size = sizeof(struct daedalus_backend),
#endif
#ifdef PLUGIN_NULL_NAME
		.name = NULL,
#else
		.name = "c-test",
#endif
		.codecs = DAEDALUS_CODEC_BIT(DAEDALUS_CODEC_HEVC),
		.create = create,
#ifdef PLUGIN_NULL_DECODE
		.decode = NULL,
#else
		.decode = decode,
#endif
		.reset = reset,
		.destroy = destroy,
	},
	.appended_feature = 1,
	.appended_pointer = &descriptor,
};

#ifdef PLUGIN_NO_ENTRY
DAEDALUS_BACKEND_EXPORT const struct daedalus_backend *
daedalus_backend_entry_v0(uint32_t host_abi_major, uint32_t host_abi_minor);
DAEDALUS_BACKEND_EXPORT const struct daedalus_backend *
daedalus_backend_entry_v0(uint32_t host_abi_major, uint32_t host_abi_minor)
#else
const struct daedalus_backend *
daedalus_backend_entry(uint32_t host_abi_major, uint32_t host_abi_minor)
#endif
{
	(void)host_abi_major;
	(void)host_abi_minor;
#ifdef PLUGIN_REFUSE
	return NULL;
#else
	return &descriptor.base;
#endif
}
