// SPDX-License-Identifier: GPL-2.0
/*
 * klpt_busy: a target module whose worker sits in the to-be-patched
 * klpt_busy_work_func() for up to sleep_secs seconds (like the kernel's
 * test_klp_callbacks_busy), so a klpt_lp patching transition stalls: the
 * consistency model will not switch a task that is running a function being
 * patched.
 *
 * Unlike the selftest module:
 * - init waits until the worker has entered the function (so a livepatch
 *   loaded right after insmod reliably finds it busy), and with sleep_secs=0
 *   waits for it to finish (its messages come before insmod returns);
 * - module exit cuts the wait short, so a scenario can use a generous
 *   sleep_secs (robust on a slow TCG host) without waiting it out at rmmod;
 * - writing 1 to the `release` parameter cuts it short too, with the module
 *   staying loaded: a stalled transition can then go on to complete.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/workqueue.h>
#include <linux/completion.h>
#include <linux/wait.h>
#include <linux/jiffies.h>

static int sleep_secs;
module_param(sleep_secs, int, 0644);
MODULE_PARM_DESC(sleep_secs, "seconds the worker stays in klpt_busy_work_func (default 0)");

static void klpt_busy_release(void);

static int set_release(const char *val, const struct kernel_param *kp)
{
	bool on;
	int ret = kstrtobool(val, &on);

	if (ret)
		return ret;
	if (on)
		klpt_busy_release();
	return 0;
}

static const struct kernel_param_ops release_ops = { .set = set_release };
module_param_cb(release, &release_ops, NULL, 0200);
MODULE_PARM_DESC(release, "write 1: the worker leaves klpt_busy_work_func now");

static void klpt_busy_work_func(struct work_struct *work);
static DECLARE_WORK(work, klpt_busy_work_func);
static DECLARE_COMPLETION(work_started);
static DECLARE_WAIT_QUEUE_HEAD(stop_wq);
static bool stop;

static noinline void klpt_busy_work_func(struct work_struct *work)
{
	pr_info("%s, sleeping %d seconds ...\n", __func__, sleep_secs);
	complete(&work_started);
	/* Uninterruptible, like msleep: the task stays in this function. */
	wait_event_timeout(stop_wq, READ_ONCE(stop), sleep_secs * HZ);
	pr_info("%s exit\n", __func__);
}

static int klpt_busy_init(void)
{
	pr_info("%s\n", __func__);
	schedule_work(&work);
	wait_for_completion(&work_started);
	if (!sleep_secs)
		flush_work(&work);
	return 0;
}

static void klpt_busy_release(void)
{
	WRITE_ONCE(stop, true);
	wake_up(&stop_wq);
}

static void klpt_busy_exit(void)
{
	klpt_busy_release();
	flush_work(&work);
	pr_info("%s\n", __func__);
}

module_init(klpt_busy_init);
module_exit(klpt_busy_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("klptrace lab: busy target module that stalls a patch transition");
