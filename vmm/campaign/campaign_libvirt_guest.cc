// A libvirt domain as a campaign's guest: powered on fresh for each phase, protected by an
// `immortal attach --libvirt` supervisor, with the records disk and the workload's port added
// live (they go when the domain powers off; a reset keeps them).
#include "campaign/campaign_guest.h"

#include "base/error.h"
#include "base/markup_text.h"
#include "campaign/campaign_plan.h"
#include "campaign/workload_records.h"
#include "libvirt/domain_preparation.h"
#include "libvirt/libvirt_connection.h"

#include <fmt/format.h>

#include <sys/stat.h>

#include <filesystem>

namespace immortal::vmm {

namespace {

// The first virtio disk name the running domain does not use (vdb…vdz).
std::string free_disk_target(const std::string& live_xml) {
  for (char c = 'b'; c <= 'z'; ++c) {
    std::string dev = std::string("vd") + c;
    if (live_xml.find("dev='" + dev + "'") == std::string::npos && live_xml.find("dev=\"" + dev + "\"") == std::string::npos)
      return dev;
  }
  fail(ExitCode::failure, "the libvirt domain has no free virtio disk name (vdb to vdz) for the records disk");
}

// libvirt's QEMU usually runs as its own account (libvirt-qemu): libvirt hands it the files, but
// it must be able to reach them. The first directory on the way it cannot pass, if any.
std::string closed_directory(const std::string& file) {
  for (auto dir = std::filesystem::path(file).parent_path(); !dir.empty() && dir != dir.root_path(); dir = dir.parent_path()) {
    struct stat st {};
    if (::stat(dir.c_str(), &st) == 0 && !(st.st_mode & S_IXOTH)) return dir.string();
  }
  return "";
}

}  // namespace

void CampaignGuest::start_libvirt() {
  LibvirtConnection connection(plan_.libvirt_uri);
  LibvirtDomain domain = connection.domain(plan_.libvirt_domain);
  if (!domain_is_prepared(domain.xml(/*inactive=*/true)))
    fail(ExitCode::usage, "libvirt domain {} is not prepared for immortal: run immortal prepare {} first", domain.name(),
         domain.name());
  // libvirt's QEMU (another account) must pass the output directory to reach the records disk
  // and the port's file: traversable, not listable, whatever the umask made it.
  if (struct stat st {}; ::stat(out_dir_.c_str(), &st) == 0 && !(st.st_mode & S_IXOTH))
    ::chmod(out_dir_.c_str(), (st.st_mode & 07777) | S_IXGRP | S_IXOTH);
  // Each phase (and each restart after a hang) begins with a fresh boot.
  if (domain.active()) domain.destroy();
  domain.start();
  std::vector<std::string> args = {"attach", "--libvirt", domain.name(), "--connect", connection.uri(), "--name", name_, "--detach"};
  auto protection = protection_args();
  args.insert(args.end(), protection.begin(), protection.end());
  if (int rc = run_self(args); rc != 0)
    fail(ExitCode::failure, "the campaign could not protect libvirt domain {} (exit status {}; see {})", domain.name(), rc, log_);
  // Added once the guest is up: its kernel takes them as hot-plugged devices.
  std::string disk = fmt::format(
      "<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{}'/>"
      "<target dev='{}' bus='virtio'/><serial>{}</serial></disk>",
      markup_escape(std::filesystem::absolute(disk_).string()), free_disk_target(domain.xml(false)), kLibvirtRecordsSerial);
  std::string port = fmt::format(
      "<channel type='file'><source path='{}' append='on'/><target type='virtio' name='{}'/></channel>",
      markup_escape(std::filesystem::absolute(acks_).string()), kRecordsPort);
  try {
    domain.attach_live(disk);
    domain.attach_live(port);
  } catch (const Error& e) {
    std::string closed = closed_directory(std::filesystem::absolute(disk_).string());
    fail(ExitCode::failure, "{}{}{}", e.what(),
         closed.empty() ? "" : fmt::format(" ({} is closed to other accounts, such as the one libvirt runs QEMU as: "
                                           "choose an output directory it can reach with -o)", closed),
         " (a domain needs ACPI, <features><acpi/></features>, to take a disk while it runs)");
  }
}

void CampaignGuest::power_off_libvirt() {
  try {
    LibvirtConnection connection(plan_.libvirt_uri);
    LibvirtDomain domain = connection.domain(plan_.libvirt_domain);
    if (domain.active()) domain.destroy();
  } catch (const Error&) {
    // Gone, or libvirt not answering: nothing of ours left running.
  }
}

}  // namespace immortal::vmm
