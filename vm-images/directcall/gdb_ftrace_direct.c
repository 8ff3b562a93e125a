// SPDX-License-Identifier: GPL-2.0
/*
 * gdb_ftrace direct-call fixture: attaches an ftrace direct call (what a BPF
 * fentry trampoline is) to vfs_read() (module parameter func=). Loading the module makes ftrace patch
 * vfs_read's fentry site from a NOP to "call gdb_ftrace_direct_tramp";
 * unloading patches it back. Both go through the int3 text-patching path, so
 * a CPU reading files meanwhile runs into the int3 and the handler must
 * emulate the CALL into this module's trampoline.
 *
 * Modelled on samples/ftrace/ftrace-direct.c. Two APIs:
 *  - v6.3+: a struct ftrace_ops, register_ftrace_direct(ops, addr),
 *    unregister_ftrace_direct(ops, addr, free_filters); the function is
 *    picked by name with ftrace_set_filter(), as vfs_read is not exported.
 *  - v5.5-v6.2: register_ftrace_direct(ip, addr) on the fentry address,
 *    found by name through a kprobe's symbol lookup (kallsyms_lookup_name
 *    is not exported since v5.7).
 * Before v5.5 there are no direct calls: the module does not build, and
 * build-vm leaves gdb_ftrace_direct.unavailable saying so.
 * The trampoline only counts its calls (lock incq: flags are the only state
 * it touches), so it needs to save no argument register of vfs_read.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/kallsyms.h>
#include <linux/string.h>
#include <linux/ftrace.h>
#include <linux/kprobes.h>
#include <linux/version.h>

#ifndef CONFIG_X86_64
#error "gdb_ftrace_direct is x86_64 only"
#endif
#ifndef CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS
#error "this kernel has no ftrace direct calls (CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS, v5.5+)"
#endif

#if LINUX_VERSION_CODE >= KERNEL_VERSION(5, 18, 0)
#include <asm/ibt.h>
#endif
#include <asm/linkage.h>
#include <asm/nospec-branch.h>
#ifndef ASM_ENDBR
#define ASM_ENDBR ""
#endif
#ifndef CALL_DEPTH_ACCOUNT
#define CALL_DEPTH_ACCOUNT ""
#endif
#ifndef ASM_RET
#define ASM_RET "ret\n"
#endif

/* Calls of the trampoline since load: /sys/module/gdb_ftrace_direct/parameters/calls */
unsigned long gdb_ftrace_direct_calls;
module_param_named(calls, gdb_ftrace_direct_calls, ulong, 0444);
MODULE_PARM_DESC(calls, "how many times vfs_read ran through the direct trampoline");

extern void gdb_ftrace_direct_tramp(void);

/*
 * Entered by the CALL at vfs_read's fentry site, before vfs_read's body:
 * an indirect-branch target for IBT (endbr64), a frame for the unwinder,
 * the call depth accounted for the return thunk (the fentry CALL is not made
 * through a call thunk), and the return through the return thunk.
 */
asm (
"	.pushsection	.text, \"ax\", @progbits\n"
"	.type		gdb_ftrace_direct_tramp, @function\n"
"	.globl		gdb_ftrace_direct_tramp\n"
"   gdb_ftrace_direct_tramp:"
	ASM_ENDBR
"	pushq %rbp\n"
"	movq %rsp, %rbp\n"
	CALL_DEPTH_ACCOUNT
"	lock incq gdb_ftrace_direct_calls(%rip)\n"
"	leave\n"
	ASM_RET
"	.size		gdb_ftrace_direct_tramp, .-gdb_ftrace_direct_tramp\n"
"	.popsection\n"
);

static char *func = "vfs_read";
module_param(func, charp, 0444);
MODULE_PARM_DESC(func, "the traceable function to attach the direct call to");

#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 3, 0)
static struct ftrace_ops direct;
static char filter[KSYM_NAME_LEN];

static int __init gdb_ftrace_direct_init(void)
{
	int ret;

	/* ftrace_set_filter() fails with -EINVAL when no traceable function matches. */
	strscpy(filter, func, sizeof(filter));
	ret = ftrace_set_filter(&direct, filter, strlen(filter), 1);
	if (ret)
		return ret;
	ret = register_ftrace_direct(&direct, (unsigned long)gdb_ftrace_direct_tramp);
	if (ret)
		ftrace_free_filter(&direct);
	return ret;
}

static void __exit gdb_ftrace_direct_exit(void)
{
	unregister_ftrace_direct(&direct, (unsigned long)gdb_ftrace_direct_tramp, true);
}
#else
static unsigned long ip; /* the fentry site: the function's first byte (no IBT before v5.18) */

static int __init gdb_ftrace_direct_init(void)
{
	struct kprobe kp = { .symbol_name = func, .flags = KPROBE_FLAG_DISABLED };
	int ret;

	ret = register_kprobe(&kp); /* disabled: only to look the address up by name */
	if (ret)
		return ret;
	ip = (unsigned long)kp.addr;
	unregister_kprobe(&kp);
	return register_ftrace_direct(ip, (unsigned long)gdb_ftrace_direct_tramp);
}

static void __exit gdb_ftrace_direct_exit(void)
{
	unregister_ftrace_direct(ip, (unsigned long)gdb_ftrace_direct_tramp);
}
#endif

module_init(gdb_ftrace_direct_init);
module_exit(gdb_ftrace_direct_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("gdb_ftrace test ftrace direct call on vfs_read");
