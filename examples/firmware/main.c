/* main.c: run a qcc model on the inputs embedded in fw_model.h and print its outputs.
 * Floats are printed as the hex of their bits, so the host can compare them bit for bit.
 * The model's weights are const (flash); its arena is a static, aligned array (.bss). */
#include <stdint.h>
#include <string.h>
#include "semihost.h"
#include "fw_model.h"  /* written by build.py: the model's header, FW_* names, fw_inputs */

static unsigned char arena[FW_ARENA_SIZE > 0 ? FW_ARENA_SIZE : 1] __attribute__((aligned(FW_ARENA_ALIGN)));
static float output[FW_OUTPUT_SIZE];

/* From the linker script (an386.ld). */
extern const char __flash_start[], __flash_end[], __model_text_start[], __model_text_end[];
extern const char __model_rodata_start[], __model_rodata_end[];
extern char __ram_start[], __ram_end[], __data_start[], __data_end[], __bss_start[], __bss_end[];
extern char __stack_bottom[], __stack_top[];
uint32_t stack_used_bytes(void);  /* startup.c */

static uint32_t span(const char *a, const char *b) { return (uint32_t)(b - a); }

/* SysTick as a 24-bit down-counter on the core clock: elapsed ticks of one run (under QEMU
 * with -icount shift=0 the clock ticks once per instruction times the clock period). */
#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)

static uint32_t float_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

int main(void) {
    sh_puts("qcc firmware: model " FW_MODEL_NAME ", ");
    sh_putu(FW_SAMPLES);
    sh_puts(" samples\n");
    for (uint32_t s = 0; s < FW_SAMPLES; s++) {
        memset(arena, 0xA5, sizeof arena);  /* a read of stale scratch memory would show */
        SYST_RVR = 0x00FFFFFFu;
        SYST_CVR = 0;
        SYST_CSR = 5u;  /* enable, core clock, no interrupt */
        const uint32_t t0 = SYST_CVR;
        const int status = FW_RUN(fw_inputs[s], output, arena);
        const uint32_t t1 = SYST_CVR;
        SYST_CSR = 0;
        if (status != 0) {
            sh_puts("error: " FW_MODEL_NAME "_run returned ");
            sh_putu((uint32_t)status);
            sh_puts("\n");
            return 1;
        }
        sh_puts("output ");
        sh_putu(s);
        sh_puts(":");
        for (uint32_t i = 0; i < FW_OUTPUT_SIZE; i++) {
            sh_puts(" ");
            sh_puthex(float_bits(output[i]));
        }
        sh_puts("\nticks ");
        sh_putu(s);
        sh_puts(": ");
        sh_putu((t0 - t1) & 0x00FFFFFFu);
        sh_puts("\n");
    }
    sh_puts("flash: ");
    sh_putu(span(__flash_start, __flash_end));
    sh_puts(" bytes (model code ");
    sh_putu(span(__model_text_start, __model_text_end));
    sh_puts(", model constants ");
    sh_putu(span(__model_rodata_start, __model_rodata_end));
    sh_puts(")\nram: ");
    sh_putu(span(__ram_start, __ram_end));
    sh_puts(" bytes (data ");
    sh_putu(span(__data_start, __data_end));
    sh_puts(", bss ");
    sh_putu(span(__bss_start, __bss_end));
    sh_puts(" with the arena ");
    sh_putu(FW_ARENA_SIZE);
    sh_puts(", stack ");
    sh_putu(span(__stack_bottom, __stack_top));
    sh_puts(" reserved, ");
    sh_putu(stack_used_bytes());
    sh_puts(" used)\ndone\n");
    return 0;
}
