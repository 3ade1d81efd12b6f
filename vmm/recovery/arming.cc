#include "recovery/arming.h"

#include "base/error.h"
#include "engine/text_precheck.h"
#include "kernel/kernel_support.h"

#include <malloc.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace immortal::vmm {

Arming::Arming(Machine& machine, CrashInterceptor& interceptor, LiveKernel& kernel, const ProfileSource& profiles,
               RepairEngine* repair, CrashBundles& bundles, const QuarantineList& quarantine, Event event, Say say,
               Say report_ready)
    : machine_(machine),
      interceptor_(interceptor),
      kernel_(kernel),
      profiles_(profiles),
      repair_(repair),
      bundles_(bundles),
      quarantine_(quarantine),
      event_(std::move(event)),
      say_(std::move(say)),
      report_ready_(std::move(report_ready)) {}

void Arming::follow(bool recovery_enabled, const std::string& boot_id) {
  if (profiles_.busy() || (profiles_.current() && profiles_.current()->head().boot_id != boot_id)) return;
  if (recovery_enabled) {
    if (!profiles_.current()) {
      if (!profiles_.last_error().empty())
        report_ready_("crash interception NOT armed (no guest profile: " + profiles_.last_error() + ")");
    } else if (profiles_.number() != armed_profile_) {
      armed_profile_ = profiles_.number();  // one attempt per profile, whatever happens
      arm();
    }
  }
  bundles_.prepare_arena(profiles_.number(), machine_, kernel_);
}

void Arming::arm() {
  try {
    if (!machine_.capabilities().breakpoints)
      fail(ExitCode::unsupported, "the {} backend has no breakpoints to catch a crash at its first instruction",
           machine_.backend());
    Kernel& kernel = kernel_.get();
    // A kernel whose layouts the readers do not understand is not repaired: its crashes reboot.
    KernelSupport support = check_kernel_support(kernel);
    event_("kernel-support", {{"release", kernel.release()}, {"understood", support.summary()}, {"missing", support.missing()}});
    if (!support.complete())
      fail(ExitCode::unsupported, "kernel {} is not fully understood ({}): crashes will be bundled and rebooted, not repaired",
           kernel.release(), fmt::join(support.missing(), "; "));
    auto notes = while_paused(machine_, [&] { return interceptor_.arm(kernel); });
    event_("armed", {{"interception", interceptor_.points()}, {"notes", notes}});
    for (const auto& n : notes) say_(n);
    rebuild_repair_image(kernel_.profile()->head().taken_at);
    report_ready_(fmt::format("crash interception armed at {}", fmt::join(interceptor_.points(), ", ")));
  } catch (const std::exception& e) {
    event_("arm-failed", {{"error", e.what()}});
    say_(std::string("cannot arm crash interception (crashes will reboot the guest): ") + e.what());
    report_ready_(std::string("crash interception NOT armed: ") + e.what());
  }
}

void Arming::rebuild_repair_image(const std::string& taken_at) {
  if (!repair_) return;
  bundles_.set_code_pages({});  // until the new healthy copy says where the code is
  try {
    auto ram = machine_.capabilities().shared_ram ? machine_.ram_file() : std::nullopt;
    if (!ram) fail(ExitCode::unsupported, "the {} backend has no shared RAM for a repair VM or process to read", machine_.backend());
    // The guest is healthy and running: its code is read as it is now (runtime patch sites
    // that change later are recognised at the comparison).
    repair::HealthyImage healthy = repair::capture_healthy_image(kernel_.get(), taken_at);
    // Functions quarantined now are healthy with their original bytes: an unquarantine later
    // must not look like corruption (nor a restore put the patch back).
    for (const auto& q : quarantine_.entries())
      for (auto& r : healthy.regions)
        if (r.contains(q.address, q.original.size()))
          std::copy(q.original.begin(), q.original.end(), r.bytes.begin() + static_cast<std::ptrdiff_t>(q.address - r.address));
    // The repair image carries the profile as saved in the instance directory (files, as the
    // repair agent in another VM reads them).
    repair_->rebuild(profiles_.dir(), healthy, *ram);
    // A crash compares the kernel's code where it lies (text_precheck.h) before asking the
    // engine: once now, on the healthy guest, so that the payload's and guest RAM's pages are
    // mapped here before a crash, not faulted in during its pause (43 ms for a first crash, 3 after).
    if (const auto* copy = repair_->healthy()) {
      (void)repair::precheck_text(*copy, kernel_.get().memory().physical());
      // Where the kernel's code lies, once per image: a crash's bundle takes the unchanged pages
      // from this copy, an on-demand bundle reads them after its pause.
      bundles_.set_code_pages(repair::whole_code_pages(*copy));
    }
  } catch (const std::exception& e) {
    event_("repair-failed", {{"mode", repair_->mode()}, {"error", std::string("cannot build the repair image: ") + e.what()}});
    say_(std::string("cannot build the repair image (crashes will be analysed by the fallback, if any): ") + e.what());
  }
  // The captured copy is gone (the payload holds the kernel's code now, read in place), and so are
  // the profile's files and the payload archive the rebuild held: their tens of MiB go back to the
  // host rather than stay in the C library's free lists (the supervisor lives long). Once, here,
  // after all of them are freed.
  ::malloc_trim(0);
}

}  // namespace immortal::vmm
