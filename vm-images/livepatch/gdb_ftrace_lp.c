// SPDX-License-Identifier: GPL-2.0
/*
 * gdb_ftrace livepatch fixture: replaces cmdline_proc_show() with a body
 * that prints a fixed marker, so the guest can count every read of
 * /proc/cmdline that still ran the old (unpatched) function.
 *
 * Modelled on samples/livepatch/livepatch-sample.c.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/seq_file.h>

#define GDB_FTRACE_MARKER "gdb_ftrace-livepatched-cmdline"

static int livepatch_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s\n", GDB_FTRACE_MARKER);
	return 0;
}

static struct klp_func funcs[] = {
	{
		.old_name = "cmdline_proc_show",
		.new_func = livepatch_cmdline_proc_show,
	}, { }
};

static struct klp_object objs[] = {
	{
		/* name being NULL means vmlinux */
		.funcs = funcs,
	}, { }
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
};

static int livepatch_init(void)
{
	return klp_enable_patch(&patch);
}

static void livepatch_exit(void)
{
}

module_init(livepatch_init);
module_exit(livepatch_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("gdb_ftrace test livepatch of cmdline_proc_show");
MODULE_INFO(livepatch, "Y");
