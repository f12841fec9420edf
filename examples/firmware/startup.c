/* startup.c: the vector table and reset handler of a Cortex-M4 (QEMU mps2-an386).
 * Reset: enable the FPU (when built for it), copy .data from flash to RAM, zero .bss, fill the
 * unused stack with a pattern (main reports how deep it went), call main, exit with its status. */
#include <stdint.h>
#include "semihost.h"

extern uint32_t __data_load[], __data_start[], __data_end[], __bss_start[], __bss_end[];
extern uint32_t __stack_bottom[], __stack_top[];
int main(void);

#define STACK_PAINT 0x5ca1ab1eu

/* The words of the stack region below the first one that ever held something else. */
uint32_t stack_used_bytes(void) {
    const uint32_t *p = __stack_bottom;
    while (p < __stack_top && *p == STACK_PAINT) p++;
    return (uint32_t)((uintptr_t)__stack_top - (uintptr_t)p);
}

__attribute__((noreturn)) void Reset_Handler(void) {
#if defined(__ARM_FP)
    /* CPACR: full access to coprocessors 10 and 11 (the FPU) before any float instruction. */
    *(volatile uint32_t *)0xE000ED88u |= 0xFu << 20;
    __asm__ volatile("dsb\n\tisb" ::: "memory");
#endif
    for (uint32_t *s = __data_load, *d = __data_start; d < __data_end;) *d++ = *s++;
    for (uint32_t *d = __bss_start; d < __bss_end;) *d++ = 0;
    uint32_t *sp;
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    for (volatile uint32_t *d = __stack_bottom; d < sp - 16;) *d++ = STACK_PAINT;
    sh_exit(main());
}

static void fault(const char *what) {
    sh_puts(what);
    sh_puts("\n");
    sh_exit(1);
}
void NMI_Handler(void) { fault("fault: NMI"); }
void HardFault_Handler(void) { fault("fault: HardFault"); }
void MemManage_Handler(void) { fault("fault: MemManage"); }
void BusFault_Handler(void) { fault("fault: BusFault"); }
void UsageFault_Handler(void) { fault("fault: UsageFault (unaligned access, undefined instruction or FPU disabled)"); }
void Default_Handler(void) { fault("fault: unexpected interrupt"); }

typedef void (*vector)(void);
__attribute__((section(".vectors"), used)) const vector vectors[16] = {
    (vector)(uintptr_t)__stack_top, Reset_Handler, NMI_Handler, HardFault_Handler, MemManage_Handler,
    BusFault_Handler, UsageFault_Handler, 0, 0, 0, 0, Default_Handler /* SVCall */, Default_Handler,
    0, Default_Handler /* PendSV */, Default_Handler /* SysTick */,
};
