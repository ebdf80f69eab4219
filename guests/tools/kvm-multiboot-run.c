// kvm-multiboot-run: a stand-alone developer tool that boots one of Modular's Multiboot test guests
// under KVM following /work/shared/KVM-NOTES.md, without Modular. It exists to prove the guests run
// (and to reproduce their timings) independently of the C# KVM layer. Not part of the build.
//
//   gcc -O2 -o /tmp/kvm-multiboot-run guests/tools/kvm-multiboot-run.c -lpthread
//   /tmp/kvm-multiboot-run artifacts/guests/ab-guest.elf 256 5     # ELF, RAM in MiB, seconds
//
// It prints COM1 output, stops the vCPU after the given time (signal kick, mid-pass), reports the
// time of 'A' and the interval between 'B's, and checks RAM with the A/B rule of
// Modular.Core.Verification.AbRamCheck (exit status 0 = pass). Handles HLT and isa-debug-exit (0xf4).
// RAM layout as Modular's PcRamLayout: 0-3 GiB at GPA 0, the rest from 4 GiB. a.out kludge only.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define GIB (1ull << 30)
#define CHECK(x) do { if ((x) < 0) { perror(#x); exit(2); } } while (0)

static uint8_t *low_ram, *high_ram;
static uint64_t low_size, high_size;
static struct kvm_run *run;
static pthread_t vcpu_thread;
static double stop_after;

static uint8_t *host(uint64_t gpa) { return gpa >= 4 * GIB ? high_ram + (gpa - 4 * GIB) : low_ram + gpa; }

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

static void on_kick(int signo) { (void)signo; }

// KVM-NOTES "Pausing a vCPU": immediate_exit plus a signal that is unblocked only inside KVM_RUN.
static void *stop_timer(void *arg) {
  (void)arg;
  usleep((useconds_t)(stop_after * 1e6));
  run->immediate_exit = 1;
  pthread_kill(vcpu_thread, SIGUSR1);
  return NULL;
}

static void *map_slot(int vm, int slot, uint64_t gpa, uint64_t size) {
  void *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (mem == MAP_FAILED) { perror("mmap"); exit(2); }
  struct kvm_userspace_memory_region region = {
      .slot = slot, .guest_phys_addr = gpa, .memory_size = size, .userspace_addr = (uint64_t)mem};
  CHECK(ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region));
  return mem;
}

static uint32_t load_kernel(const char *path) {
  static uint8_t file[1 << 20];
  FILE *f = fopen(path, "rb");
  if (!f) { perror(path); exit(2); }
  size_t n = fread(file, 1, sizeof file, f);
  fclose(f);
  for (uint32_t off = 0; off + 32 <= n && off + 32 <= 8192; off += 4) {
    uint32_t *h = (uint32_t *)(file + off);
    if (h[0] != 0x1BADB002 || h[0] + h[1] + h[2] != 0) continue;
    if (!(h[1] & 0x10000)) { fprintf(stderr, "%s: no a.out kludge\n", path); exit(2); }
    uint32_t header_addr = h[3], load_addr = h[4], load_end = h[5], bss_end = h[6];
    uint32_t file_off = off - (header_addr - load_addr);
    uint32_t len = load_end ? load_end - load_addr : (uint32_t)n - file_off;
    memcpy(host(load_addr), file + file_off, len);
    if (bss_end) memset(host(load_addr + len), 0, bss_end - load_addr - len);
    return h[7];
  }
  fprintf(stderr, "%s: no Multiboot header\n", path);
  exit(2);
}

// KVM-NOTES step 5: info at 0x9000, memory map at 0x9100.
static void write_info(void) {
  uint32_t *info = (uint32_t *)host(0x9000);
  memset(info, 0, 0x1000);
  info[0] = 1 | 64;
  info[1] = 639;
  info[2] = (uint32_t)((low_size - (1 << 20)) / 1024);
  uint8_t *map = host(0x9100);
  uint32_t len = 0;
#define ENTRY(b, l, t) do { *(uint32_t *)(map + len) = 20; *(uint64_t *)(map + len + 4) = (b); \
    *(uint64_t *)(map + len + 12) = (l); *(uint32_t *)(map + len + 20) = (t); len += 24; } while (0)
  ENTRY(0, 0x9FC00, 1);
  ENTRY(0x9FC00, 0x400, 2);
  ENTRY(0xF0000, 0x10000, 2);
  ENTRY(0x100000, low_size - 0x100000, 1);
  if (high_size) ENTRY(4 * GIB, high_size, 1);
  info[11] = len;
  info[12] = 0x9100;
}

static void setup_vcpu(int kvm, int cpu, uint32_t entry) {
  int nent = 64;
  struct kvm_cpuid2 *cpuid;
  for (;;) {  // KVM-NOTES step 7: without CPUID, EFER.LME faults.
    cpuid = calloc(1, sizeof *cpuid + nent * sizeof(struct kvm_cpuid_entry2));
    cpuid->nent = nent;
    if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, cpuid) == 0) break;
    if (errno != E2BIG) { perror("KVM_GET_SUPPORTED_CPUID"); exit(2); }
    free(cpuid);
    nent *= 2;
  }
  CHECK(ioctl(cpu, KVM_SET_CPUID2, cpuid));
  struct kvm_sregs sregs;
  CHECK(ioctl(cpu, KVM_GET_SREGS, &sregs));
  struct kvm_segment code = {.base = 0, .limit = 0xFFFFFFFF, .selector = 0x10, .type = 0xB,
                             .present = 1, .dpl = 0, .db = 1, .s = 1, .l = 0, .g = 1};
  struct kvm_segment data = code;
  data.type = 3;
  data.selector = 0x18;
  sregs.cs = code;
  sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data;
  sregs.cr0 = 0x11;
  sregs.cr4 = 0;
  sregs.efer = 0;
  CHECK(ioctl(cpu, KVM_SET_SREGS, &sregs));
  struct kvm_regs regs = {.rflags = 2, .rip = entry, .rax = 0x2BADB002, .rbx = 0x9000};
  CHECK(ioctl(cpu, KVM_SET_REGS, &regs));
}

// The A/B rule: equal neighbours except one step down by one (mod 256); bad pages never become the reference.
static int check_ram(void) {
  uint64_t pages = 0, bad = 0, step = 0;
  uint8_t first = *host(0x100000), last = first;
  for (int part = 0; part < 2; part++) {
    uint64_t a = part ? 4 * GIB : 0x100000, end = part ? 4 * GIB + high_size : low_size;
    for (; a < end; a += 4096, pages++) {
      uint8_t b = *host(a);
      if (b == last) continue;
      if ((uint8_t)(b + 1) == last && !step) { step = a; last = b; continue; }
      if (bad++ < 5) printf("bad page %#llx: %#x after %#x\n", (unsigned long long)a, b, last);
    }
  }
  printf("RAM check: %llu pages, first byte %#x, step at %#llx, %llu bad: %s\n", (unsigned long long)pages, first,
         (unsigned long long)step, (unsigned long long)bad, bad ? "FAIL" : "PASS");
  return bad ? 1 : 0;
}

int main(int argc, char **argv) {
  if (argc != 4) { fprintf(stderr, "usage: %s KERNEL.elf RAM_MIB SECONDS\n", argv[0]); return 2; }
  uint64_t ram = strtoull(argv[2], NULL, 0) << 20;
  stop_after = atof(argv[3]);
  low_size = ram > 3 * GIB ? 3 * GIB : ram;
  high_size = ram - low_size;

  int kvm = open("/dev/kvm", O_RDWR);
  CHECK(kvm);
  int vm = ioctl(kvm, KVM_CREATE_VM, 0);
  CHECK(vm);
  low_ram = map_slot(vm, 0, 0, low_size);
  if (high_size) high_ram = map_slot(vm, 1, 4 * GIB, high_size);
  uint32_t entry = load_kernel(argv[1]);
  write_info();
  int cpu = ioctl(vm, KVM_CREATE_VCPU, 0);
  CHECK(cpu);
  run = mmap(NULL, ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0), PROT_READ | PROT_WRITE, MAP_SHARED, cpu, 0);
  setup_vcpu(kvm, cpu, entry);

  signal(SIGUSR1, on_kick);
  sigset_t kick;
  sigemptyset(&kick);
  sigaddset(&kick, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &kick, NULL);
  struct kvm_signal_mask *mask = calloc(1, sizeof *mask + 8);
  mask->len = 8;  // empty mask: SIGUSR1 is unblocked inside KVM_RUN only
  CHECK(ioctl(cpu, KVM_SET_SIGNAL_MASK, mask));
  vcpu_thread = pthread_self();
  pthread_t timer;
  pthread_create(&timer, NULL, stop_timer, NULL);

  double start = now(), a_at = -1, first_b = -1, last_b = -1;
  int bs = 0;
  for (int running = 1; running;) {
    if (ioctl(cpu, KVM_RUN, 0) < 0) {
      if (errno == EINTR) { printf("\n[stopped after %.2f s]\n", now() - start); break; }
      perror("KVM_RUN");
      return 2;
    }
    uint8_t *data = (uint8_t *)run + run->io.data_offset;
    switch (run->exit_reason) {
    case KVM_EXIT_IO:
      if (run->io.direction == KVM_EXIT_IO_OUT && run->io.port == 0x3f8) {
        putchar(*data);
        fflush(stdout);
        if (*data == 'A') a_at = now() - start;
        if (*data == 'B') { last_b = now() - start; if (bs++ == 0) first_b = last_b; }
      } else if (run->io.direction == KVM_EXIT_IO_IN && run->io.port == 0x3fd) {
        *data = 0x60;  // LSR: transmitter empty
      } else if (run->io.direction == KVM_EXIT_IO_OUT && run->io.port == 0xf4) {
        printf("\n[isa-debug-exit %#x: exit status %d]\n", *data, (*data << 1) | 1);
        running = 0;
      } else if (run->io.direction == KVM_EXIT_IO_IN) {
        memset(data, 0xff, run->io.size);
      }
      break;
    case KVM_EXIT_HLT:
      printf("\n[HLT after %.2f s]\n", now() - start);
      running = 0;
      break;
    default: {
      struct kvm_regs regs;
      ioctl(cpu, KVM_GET_REGS, &regs);
      printf("\n[exit reason %d at rip %#llx]\n", run->exit_reason, (unsigned long long)regs.rip);
      return 2;
    }
    }
  }
  if (a_at >= 0) printf("'A' after %.2f s\n", a_at);
  if (bs > 1) printf("%d 'B's, first after %.2f s, then every %.2f s\n", bs, first_b, (last_b - first_b) / (bs - 1));
  return check_ram();
}
