#include "recovery/guest_reboot.h"

#include "base/error.h"

#include <fmt/format.h>

namespace immortal::vmm {

bool GuestReboot::guest_has_kdump() {
  try {
    Kernel& kernel = p_.kernel.get();
    auto image = kernel.symbols().address_of("kexec_crash_image");
    return image && kernel.memory().read_u64(*image) != 0;
  } catch (const std::exception&) {
    return false;
  }
}

void GuestReboot::leave_boot(const char* event_name, const std::string& outcome, const std::string& reason,
                                     std::uint64_t crash, const char* to_clients) {
  p_.event(event_name, {{"crash", crash}, {"reason", reason}});
  p_.ledger.set_outcome(crash, outcome);
  p_.bundles.add_recovery_note("reboot_reason", reason);  // the pending crash's bundle, if any
  p_.bundles.finish(outcome);
  p_.ledger.count_reboot();
  old_boot_id_ = p_.agent.hello() ? p_.agent.hello()->boot_id : "";
  p_.agent.abandon(to_clients);
}

void GuestReboot::forget_boot() {
  // The next boot has other addresses (KASLR) and fresh code: nothing armed or patched holds.
  arming_.forget();
  p_.quarantine.clear();
  p_.kernel.forget();
}

namespace {
// A kdump kernel saves the crashed memory before the guest boots again: minutes on big guests.
constexpr auto kKdumpBootTimeout = std::chrono::minutes(10);
constexpr auto kMaxBackOff = std::chrono::seconds(60);
}  // namespace

void GuestReboot::hand_to_guest_kdump(const std::string& reason, std::uint64_t crash) {
  // The operator armed kdump in the guest: an unrecoverable crash goes where they wanted it.
  // panic() runs on from its first instruction (the breakpoints removed, or it would stop there
  // again) and calls __crash_kexec(); what the kdump kernel does next (save a vmcore, reboot) is
  // the guest's business; its next boot says hello like any other.
  p_.say(fmt::format("crash {}: not recovered ({}); the guest's own kdump takes it", crash, reason));
  leave_boot("kdump", "handed to the guest's kdump", reason, crash, "the guest went to its kdump kernel");
  try {
    interceptor_.disarm();
    p_.state.change(GuestState::rebooting, "handed to the guest's kdump");
    p_.machine.resume();
  } catch (const Error& e) {
    p_.say(std::string("handing the crash to the guest's kdump failed: ") + e.what());
    return reboot(reason, crash);
  }
  forget_boot();
  attempts_ = 0;
  retry_at_.reset();
  boot_wait_ = std::max<std::chrono::milliseconds>(p_.policy.boot_timeout, kKdumpBootTimeout);
  boot_deadline_ = Clock::now() + boot_wait_;
}

void GuestReboot::reboot(const std::string& reason, std::uint64_t crash) {
  p_.say(fmt::format("crash {}: rebooting the guest: {}", crash, reason));
  leave_boot("reboot", "rebooted", reason, crash, "the guest is rebooting");
  attempts_ = 0;
  reset_guest("rebooted after a crash");
}

void GuestReboot::reset_guest(const char* why) {
  retry_at_.reset();
  try {
    if (p_.machine.state() == RunState::running) p_.machine.pause();
    interceptor_.disarm();
    p_.state.change(GuestState::rebooting, why);  // before the reset: its RESET event is ours
    p_.machine.reset();
    p_.machine.resume();
  } catch (const Error& e) {
    p_.say(std::string("the reboot failed: ") + e.what());
    boot_deadline_.reset();
    return p_.give_up("the crashed guest could not be rebooted");
  }
  forget_boot();
  boot_wait_ = p_.policy.boot_timeout;
  boot_deadline_ = Clock::now() + boot_wait_;
}

void GuestReboot::boot_failed(const std::string& why) {
  ++attempts_;
  auto back_off = std::min<std::chrono::milliseconds>(std::chrono::seconds(1) * (1 << std::min(attempts_ - 1, 6)), kMaxBackOff);
  p_.event("boot-failed", {{"attempt", attempts_}, {"reason", why}, {"retry_in_s", back_off.count() / 1000.0}});
  p_.say(fmt::format("the guest's boot failed ({}); resetting it again in {} s (attempt {})", why,
                     back_off.count() / 1000.0, attempts_ + 1));
  try {
    if (p_.machine.state() == RunState::running) p_.machine.pause();
  } catch (const Error&) {
    // The reset will tell whether the VM is still there.
  }
  boot_deadline_.reset();
  retry_at_ = Clock::now() + back_off;
}

void GuestReboot::on_reset(const std::string& detail) {
  if (p_.state.is(GuestState::rebooting)) return;  // ours
  // A reboot inside the guest, or a triple fault: either way a new boot begins, whose kernel
  // addresses (KASLR) the armed breakpoints do not match.
  p_.say("the guest reset itself");
  p_.event("guest-reset", {{"detail", detail}});
  try {
    while_paused(p_.machine, [&] { interceptor_.disarm(); });
  } catch (const Error& err) {
    p_.say(std::string("cannot disarm after the reset: ") + err.what());
  }
  old_boot_id_ = p_.agent.hello() ? p_.agent.hello()->boot_id : "";
  forget_boot();
  p_.state.change(GuestState::rebooting, "the guest reset itself");
  attempts_ = 0;
  boot_wait_ = p_.policy.boot_timeout;
  boot_deadline_ = Clock::now() + boot_wait_;
}

void GuestReboot::tick() {
  if (!p_.state.is(GuestState::rebooting)) return;
  if (p_.agent.hello() && p_.agent.hello()->boot_id != old_boot_id_) {
    const auto& hello = *p_.agent.hello();
    p_.state.change(GuestState::running, "the rebooted guest said hello");
    p_.event("rebooted", {{"boot_id", hello.boot_id}, {"previous_boot_id", old_boot_id_}});
    p_.say(fmt::format("the guest is up again after the reboot: boot id {}", hello.boot_id));
    old_boot_id_.clear();
    attempts_ = 0;
    boot_deadline_.reset();
    retry_at_.reset();
    return;
  }
  if (retry_at_ && Clock::now() >= *retry_at_) return reset_guest("reset again after a failed boot");
  if (boot_deadline_ && Clock::now() >= *boot_deadline_)
    boot_failed(fmt::format("no hello from the guest agent within {} s", boot_wait_.count() / 1000));
}

}  // namespace immortal::vmm
