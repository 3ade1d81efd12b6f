#include "campaign/campaign_guest.h"

#include "base/error.h"
#include "base/unique_fd.h"
#include "campaign/campaign_plan.h"
#include "campaign/campaign_results.h"
#include "campaign/workload_records.h"
#include "cli/instance_call.h"
#include "instance.h"
#include "protocol/base64.h"

#include <fmt/format.h>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <thread>

namespace immortal::vmm {

using nlohmann::json;

namespace {

// The records disk: sector N holds record N. 256 MiB (sparse) lasts 7 hours at 20 records/s.
constexpr off_t kRecordsDiskBytes = 256ll << 20;

std::string phase_suffix(const CampaignPhase& phase) {
  if (phase.recovery) return "immortal";
  return phase.panic_on_oops == 1 ? "oops-panic" : "oops-continue";
}

}  // namespace

CampaignGuest::CampaignGuest(const GlobalOptions& global, const CampaignPlan& plan, const CampaignPhase& phase,
                             std::string out_dir, std::string log_path)
    : global_(global),
      plan_(plan),
      recovery_(phase.recovery),
      name_(plan.name + "-" + phase_suffix(phase)),
      out_dir_(std::move(out_dir)),
      log_(std::move(log_path)) {
  disk_ = out_dir_ + "/" + phase_suffix(phase) + "-records.img";
  overlay_ = out_dir_ + "/" + phase_suffix(phase) + "-disk.qcow2";
  if (plan.libvirt_domain.empty()) console_ = out_dir_ + "/" + phase_suffix(phase) + "-console.log";
  acks_ = out_dir_ + "/" + phase_suffix(phase) + "-acks.log";
}

bool CampaignGuest::plan_disk() const { return !plan_.disk.empty(); }
bool CampaignGuest::libvirt() const { return !plan_.libvirt_domain.empty(); }

std::string CampaignGuest::records_serial() const {
  if (libvirt()) return kLibvirtRecordsSerial;
  return plan_disk() ? "immortal-disk1" : "immortal-disk0";  // after the operator's system disk
}

namespace {

// Runs a program (no shell) with its output to log_fd, in a process group of its own (Ctrl-C at
// the terminal is the campaign's to handle); its exit status.
int run_host(const std::string& program, std::vector<std::string> argv, int log_fd) {
  pid_t pid = ::fork();
  if (pid < 0) fail(ExitCode::failure, "fork: {}", std::strerror(errno));
  if (pid == 0) {
    int null = ::open("/dev/null", O_RDONLY);
    ::dup2(null, 0);
    if (log_fd >= 0) ::dup2(log_fd, 1), ::dup2(log_fd, 2);
    ::setpgid(0, 0);
    std::vector<char*> c;
    for (auto& a : argv) c.push_back(a.data());
    c.push_back(nullptr);
    ::execvp(program.c_str(), c.data());
    ::_exit(127);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

std::string image_format(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) fail(ExitCode::bad_input, "cannot read the campaign's disk image \"{}\": {}", path, std::strerror(errno));
  char magic[4] = {};
  return ::pread(fd.get(), magic, 4, 0) == 4 && std::memcmp(magic, "QFI\xfb", 4) == 0 ? "qcow2" : "raw";
}

}  // namespace

int CampaignGuest::run_self(const std::vector<std::string>& args) const {
  std::vector<std::string> argv = {std::filesystem::read_symlink("/proc/self/exe").string()};
  if (!global_.runtime_dir.empty()) argv.insert(argv.end(), {"--runtime-dir", global_.runtime_dir});
  argv.insert(argv.end(), args.begin(), args.end());
  UniqueFd log(::open(log_.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644));
  // This very binary, even when a rebuild replaced the file meanwhile.
  return run_host("/proc/self/exe", argv, log.get());
}

std::vector<std::string> CampaignGuest::protection_args() const {
  return {"--on-crash", "reboot", "--recovery", recovery_ ? "on" : "off", "--repair", plan_.repair,
          "--quarantine", plan_.quarantine, "--verify-window", std::to_string(plan_.verify_window_s),
          // A campaign crashes the guest on purpose, again and again.
          "--recovery-limit", "100000/60", "--boot-timeout", "180",
          "--bundle-dir", out_dir_ + "/bundles", "--bundle-keep", std::to_string(plan_.bundle_keep)};
}

void CampaignGuest::start(bool fresh_disk) {
  if (fresh_disk) {
    UniqueFd fd(::open(disk_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (!fd || ::ftruncate(fd.get(), kRecordsDiskBytes) != 0)
      fail(ExitCode::failure, "cannot make the records disk \"{}\": {}", disk_, std::strerror(errno));
    UniqueFd acks(::open(acks_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (!acks) fail(ExitCode::failure, "cannot make \"{}\": {}", acks_, std::strerror(errno));
  }
  if (libvirt()) {
    start_libvirt();
  } else {
    start_own_vm(fresh_disk);
  }
  if (recovery_ && !wait_until_protected(std::chrono::seconds(180)))
    fail(ExitCode::timeout, "the campaign's guest \"{}\" was not protected within 180 s (immortal status {})", name_, name_);
}

void CampaignGuest::start_own_vm(bool fresh_disk) {
  std::vector<std::string> args = {"run", "--name", name_, "--detach", "--disk", disk_ + ",format=raw",
                                    "--memory", plan_.memory, "--vcpus", std::to_string(plan_.vcpus),
                                    "--console-log", console_, "--channel", std::string(kRecordsPort) + ",path=" + acks_};
  auto protection = protection_args();
  args.insert(args.end(), protection.begin(), protection.end());
  if (plan_disk()) {
    // The operator's image is only read: the guest writes to an overlay of it, made anew with
    // each fresh start of the phase.
    if (fresh_disk || ::access(overlay_.c_str(), F_OK) != 0) {
      std::string image = std::filesystem::absolute(plan_.disk).string();
      UniqueFd log(::open(log_.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644));
      ::unlink(overlay_.c_str());
      if (run_host("qemu-img", {"qemu-img", "create", "-q", "-f", "qcow2", "-F", image_format(image), "-b", image, overlay_}, log.get()) != 0)
        fail(ExitCode::failure, "cannot make an overlay of \"{}\" with qemu-img (see {})", image, log_);
    }
    // The system disk first: the firmware boots it; the records disk is the second.
    args.insert(args.begin() + 4, {"--disk", overlay_ + ",format=qcow2"});
  } else {
    std::string dir = guest_image_dir();
    args.insert(args.end(), {"--kernel", plan_.kernel.empty() ? dir + "/vmlinuz" : plan_.kernel});
    args.insert(args.end(), {"--initrd", plan_.initrd.empty() ? dir + "/initrd.img" : plan_.initrd});
  }
  if (int rc = run_self(args); rc != 0)
    fail(ExitCode::failure, "the campaign's guest \"{}\" did not start (exit status {}; see {})", name_, rc, log_);
}

void CampaignGuest::stop() {
  if (running()) run_self({"stop", name_, "--force"});  // for a libvirt domain: its supervisor only
  if (libvirt()) power_off_libvirt();
}

void CampaignGuest::restart() {
  stop();
  start(/*fresh_disk=*/false);
}

bool CampaignGuest::running() const { return instance_running(runtime_root(global_.runtime_dir), name_); }

json CampaignGuest::status() const {
  try {
    return call_instance(global_, name_, {{"command", "status"}}, std::chrono::seconds(30));
  } catch (const std::exception&) {
    return json::object();
  }
}

std::string CampaignGuest::boot_id() const {
  json s = status();
  return s.is_object() ? s.value("boot_id", "") : "";
}

bool CampaignGuest::wait_for_status(const std::function<bool(const json&)>& condition, std::chrono::seconds timeout) const {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    json s = status();
    if (s.is_object() && condition(s)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  return false;
}

bool CampaignGuest::wait_for_new_boot(const std::string& old_boot_id, std::chrono::seconds timeout) {
  return wait_for_status(
      [&](const json& s) {
        return s.value("state", "") == "running" && s.contains("agent") && s["agent"].is_object() &&
               s["agent"].value("connected", false) && s.value("boot_id", "") != old_boot_id;
      },
      timeout);
}

bool CampaignGuest::wait_until_protected(std::chrono::seconds timeout) {
  return wait_for_status(
      [&](const json& s) {
        bool armed = s.contains("recovery_state") && s["recovery_state"].is_object() && s["recovery_state"].value("armed", false);
        if (plan_.repair != "vm") return armed;
        const json* vm = s.contains("repair") && s["repair"].is_object() && s["repair"].contains("vm") ? &s["repair"]["vm"] : nullptr;
        return armed && vm && vm->is_object() && vm->value("state", "") == "ready";
      },
      timeout);
}

GuestCommandResult CampaignGuest::sh(const std::string& script, std::chrono::seconds timeout) { return sh(script, {}, timeout); }

GuestCommandResult CampaignGuest::sh(const std::string& script, const std::vector<std::string>& args, std::chrono::seconds timeout) {
  GuestCommandResult r;
  try {
    json argv = {"sh", "-c", script, "sh"};
    for (const auto& a : args) argv.push_back(a);
    json request = {{"command", "exec"}, {"argv", argv}, {"timeout_ms", timeout.count() * 1000}};
    json a = call_instance(global_, name_, request, timeout + std::chrono::seconds(10));
    r.ran = true;
    if (auto out = agent::base64_decode(a.value("stdout", ""))) r.out = *out;
    if (a.contains("exit_code") && a["exit_code"].is_number_integer()) r.exit_code = a["exit_code"].get<int>();
    if (a.value("timed_out", false)) r.ran = false, r.error = fmt::format("killed after {} s", timeout.count());
    if (a.contains("error") && a["error"].is_string()) r.error = a["error"].get<std::string>();
  } catch (const std::exception& e) {
    r.error = e.what();
  }
  return r;
}

std::string CampaignGuest::inject(const std::string& fault) {
  try {
    call_instance(global_, name_, {{"command", "inject"}, {"class", fault}}, std::chrono::seconds(45));
    return "";
  } catch (const std::exception& e) {
    return e.what();
  }
}

void CampaignGuest::unquarantine_all() {
  try {
    call_instance(global_, name_, {{"command", "unquarantine"}, {"functions", json::array()}, {"all", true}},
                  std::chrono::seconds(15));
  } catch (const std::exception&) {
    // Nothing quarantined, or the guest is not running: the next injection says what it finds.
  }
}

}  // namespace immortal::vmm
