/* semihost.c: the two semihosting calls the firmware needs, SYS_WRITE0 and SYS_EXIT.
 * A call is "bkpt 0xab" with the operation in r0 and its argument in r1 (Arm's semihosting
 * specification, M profile). */
#include "semihost.h"

enum { SYS_WRITE0 = 0x04, SYS_EXIT = 0x18 };
enum { ADP_STOPPED_APPLICATION_EXIT = 0x20026, ADP_STOPPED_RUNTIME_ERROR = 0x20023 };

static uint32_t semihost(uint32_t op, const void *arg) {
    register uint32_t r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

void sh_puts(const char *s) { semihost(SYS_WRITE0, s); }

void sh_putu(uint32_t v) {
    char buf[11], *p = buf + sizeof buf - 1;
    *p = 0;
    do { *--p = (char)('0' + v % 10u); v /= 10u; } while (v);
    sh_puts(p);
}

void sh_puthex(uint32_t v) {
    char buf[11];
    buf[0] = '0';
    buf[1] = 'x';
    for (int i = 0; i < 8; i++) buf[2 + i] = "0123456789abcdef"[(v >> (28 - 4 * i)) & 0xfu];
    buf[10] = 0;
    sh_puts(buf);
}

void sh_exit(int status) {
    /* On 32-bit Arm, SYS_EXIT takes a reason code: QEMU exits 0 for ApplicationExit, 1 else. */
    semihost(SYS_EXIT, (const void *)(uintptr_t)(status == 0 ? ADP_STOPPED_APPLICATION_EXIT : ADP_STOPPED_RUNTIME_ERROR));
    for (;;) {}
}
