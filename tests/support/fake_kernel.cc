#include "support/fake_kernel.h"

#include <cstring>

namespace immortal::test {

void map_kernel_image(VectorMemory& memory) {
  // PML4[511] → PDPT at 0x2000; PDPT[510] → a 1 GiB page at physical 0 (present, writable, large).
  memory.put<std::uint64_t>(0x1000 + 511 * 8, 0x2000 | 0x3);
  memory.put<std::uint64_t>(0x2000 + 510 * 8, 0x0 | 0x83);
}

std::unique_ptr<FakeTypes> linux_like_types() {
  auto t = std::make_unique<FakeTypes>();
  // task_struct
  t->add("task_struct", "__state", 0x18, 4);
  t->add("task_struct", "flags", 0x2c, 4);
  t->add("task_struct", "tasks", 0x100);
  t->add("task_struct", "exit_state", 0x140, 4);
  t->add("task_struct", "pid", 0x150, 4);
  t->add("task_struct", "tgid", 0x154, 4);
  t->add("task_struct", "real_parent", 0x160);
  t->add("task_struct", "comm", 0x200, 16);
  t->add("task_struct", "stack", 0x20);
  t->add_size("task_struct", 0x300);
  // module
  t->add("module", "state", 0x0, 4);
  t->add("module", "list", 0x8);
  t->add("module", "name", 0x18, 56);
  t->add("module", "core_layout.base", 0x100);
  t->add("module", "core_layout.size", 0x108, 4);
  t->add("module", "core_layout.text_size", 0x10c, 4);
  // printk ring buffer
  t->add("printk_ringbuffer", "desc_ring", 0x0);
  t->add("printk_ringbuffer", "text_data_ring", 0x30);
  t->add("prb_desc_ring", "count_bits", 0x0, 4);
  t->add("prb_desc_ring", "descs", 0x8);
  t->add("prb_desc_ring", "infos", 0x10);
  t->add("prb_desc_ring", "head_id", 0x18);
  t->add("prb_desc_ring", "tail_id", 0x20);
  t->add("prb_data_ring", "size_bits", 0x0, 4);
  t->add("prb_data_ring", "data", 0x8);
  t->add("prb_data_ring", "head_lpos", 0x10);
  t->add("prb_data_ring", "tail_lpos", 0x18);
  t->add_size("prb_desc", 24);
  t->add("prb_desc", "state_var", 0x0);
  t->add("prb_desc", "text_blk_lpos.begin", 0x8);
  t->add("prb_desc", "text_blk_lpos.next", 0x10);
  t->add_size("printk_info", 88);
  t->add("printk_info", "seq", 0x0);
  t->add("printk_info", "ts_nsec", 0x8);
  t->add("printk_info", "text_len", 0x10, 2);
  t->add("printk_info", "level", 0x13, 1, 3, 5);  // u8 flags:5, level:3
  t->add("printk_info", "flags", 0x13, 1, 5, 0);
  t->add("printk_info", "caller_id", 0x14, 4);
  // locks, and the ORC entry of 6.1 (u16 bits: sp_reg:4 bp_reg:4 type:2 end:1)
  t->add_size("mutex", 32);
  t->add("mutex", "owner", 0x0);
  t->add("mutex", "wait_list", 0x10, 16);
  t->add_size("rw_semaphore", 40);
  t->add("rw_semaphore", "count", 0x0);
  t->add("rw_semaphore", "owner", 0x8);
  t->add_size("orc_entry", 6);
  t->add("orc_entry", "type", 4, 4, 2, 8);
  t->add("orc_entry", "end", 4, 4, 1, 10);
  t->add_size("printk_ringbuffer", 0x60);
  t->add_size("prb_desc_ring", 0x28);
  t->add_size("module", 0x400);
  // a socket's lock_sock() state
  t->add("sock", "sk_lock.owned", 0x88, 4);
  return t;
}

}  // namespace immortal::test
