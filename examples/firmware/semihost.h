/* semihost.h: console output and exit through Arm semihosting (bkpt 0xab), no C library.
 * QEMU implements it with -semihosting-config enable=on,target=native; on a board, a debug
 * probe does (without one attached, bkpt 0xab halts the core). */
#ifndef SEMIHOST_H
#define SEMIHOST_H

#include <stdint.h>

void sh_puts(const char *s);              /* SYS_WRITE0: a NUL-terminated string */
void sh_putu(uint32_t v);                 /* decimal */
void sh_puthex(uint32_t v);               /* 0x%08x */
void sh_exit(int status) __attribute__((noreturn));  /* SYS_EXIT: 0 = success */

#endif
