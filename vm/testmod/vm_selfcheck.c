// SPDX-License-Identifier: GPL-2.0
/*
 * Test module of the VM harness self-checks (vm/selfcheck.sh). Loading it proves that a module
 * built out of tree against `vm/kdir` loads in the guest with its dependencies (it references
 * v4l2-mem2mem, itself built out of tree); its parameters provoke the kernel reports the
 * harness must turn into a failed run:
 *   warn=1        a WARN() splat while loading
 *   hang_secs=N   the loading task sleeps uninterruptibly for N seconds (hung-task report)
 */
#include <linux/bug.h>
#include <linux/module.h>
#include <linux/sched.h>
#include <media/v4l2-mem2mem.h>

static bool warn;
module_param(warn, bool, 0444);
MODULE_PARM_DESC(warn, "emit a WARN() at load time");

static unsigned int hang_secs;
module_param(hang_secs, uint, 0444);
MODULE_PARM_DESC(hang_secs, "sleep uninterruptibly this many seconds at load time");

static int __init vm_selfcheck_init(void)
{
	/* a real reference to v4l2-mem2mem, so modinfo lists it as a dependency */
	pr_info("vm_selfcheck: loaded (v4l2_m2m_get_vq at %ps)\n", v4l2_m2m_get_vq);
	WARN(warn, "vm_selfcheck: warning requested by warn=1\n");
	if (hang_secs) {
		pr_info("vm_selfcheck: sleeping uninterruptibly for %u s\n", hang_secs);
		schedule_timeout_uninterruptible(hang_secs * HZ);
	}
	return 0;
}

static void __exit vm_selfcheck_exit(void)
{
	pr_info("vm_selfcheck: unloaded\n");
}

module_init(vm_selfcheck_init);
module_exit(vm_selfcheck_exit);
MODULE_DESCRIPTION("daedalus-v4l2 VM harness self-check module");
MODULE_LICENSE("GPL");
