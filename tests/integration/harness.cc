#include "harness.h"

#include "base/error.h"
#include "control/control_channel.h"

#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

extern char** environ;

namespace immortal::test {

namespace {
std::string g_scratch;
std::atomic<int> g_counter{0};
}  // namespace

void prepare_environment() {
  char tmpl[] = "/tmp/immortal-it-XXXXXX";
  if (!::mkdtemp(tmpl)) std::abort();
  g_scratch = tmpl;
  ::setenv("IMMORTAL_RUNTIME_DIR", (g_scratch + "/run").c_str(), 1);
  // Bundles of every test guest go to bundles/NAME here, not to /var/crash.
  ::setenv("IMMORTAL_BUNDLE_DIR", (g_scratch + "/bundles").c_str(), 1);
  // Saved definitions too, not /etc/immortal.
  ::setenv("IMMORTAL_CONFIG_DIR", (g_scratch + "/config").c_str(), 1);
  ::signal(SIGPIPE, SIG_IGN);
}

void cleanup_environment() {
  // Guests outlive their supervisors now: a test that failed half-way may have left one running.
  DIR* dir = ::opendir(test_runtime_root().c_str());
  while (dirent* e = dir ? ::readdir(dir) : nullptr) {
    if (e->d_name[0] == '.') continue;
    for (pid_t pid : qemu_processes(e->d_name)) ::kill(pid, SIGKILL);
  }
  if (dir) ::closedir(dir);
  std::string cmd = "rm -rf '" + g_scratch + "'";
  if (std::system(cmd.c_str()) != 0) {
  }
}

int sanitizer_findings() {
  int findings = 0;
  DIR* dir = ::opendir(test_runtime_root().c_str());
  while (dirent* e = dir ? ::readdir(dir) : nullptr) {
    if (e->d_name[0] == '.') continue;
    std::string log = read_file(test_runtime_root() + "/" + e->d_name + "/supervisor.log");
    for (const char* marker : {"ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"}) {
      if (log.find(marker) != std::string::npos) {
        std::fprintf(stderr, "sanitizer report in the supervisor log of %s:\n%s\n", e->d_name, log.c_str());
        ++findings;
        break;
      }
    }
  }
  if (dir) ::closedir(dir);
  return findings;
}

std::string test_runtime_root() { return g_scratch + "/run"; }

std::string control_socket_of(const std::string& name) { return test_runtime_root() + "/" + name + "/control.sock"; }
std::string scratch_dir() { return g_scratch; }

std::string guest_dir() {
  const char* dir = std::getenv("IMMORTAL_GUEST_DIR");
  REQUIRE(dir != nullptr);
  return dir;
}

std::string unique_name(const std::string& prefix) {
  return prefix + "-" + std::to_string(::getpid()) + "-" + std::to_string(g_counter++);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::vector<std::string> missing_after_injection(const std::string& console, const std::string& fault_class,
                                                 const std::vector<std::string>& expected) {
  std::string announcement = "injects " + fault_class;
  auto at = console.rfind(announcement);
  if (at == std::string::npos) return {announcement};
  std::vector<std::string> missing;
  for (const auto& line : expected) {
    auto found = console.find(line, at);
    if (found == std::string::npos) missing.push_back(line);
    else at = found;
  }
  return missing;
}

static std::vector<char*> argv_of(std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  return argv;
}

CommandResult run_cli(const std::vector<std::string>& args, std::chrono::seconds timeout) {
  std::vector<std::string> full{IMMORTAL_BINARY};
  full.insert(full.end(), args.begin(), args.end());
  auto argv = argv_of(full);
  int out[2], err[2];
  REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
  REQUIRE(::pipe2(err, O_CLOEXEC) == 0);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out[1], 1);
  posix_spawn_file_actions_adddup2(&actions, err[1], 2);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  pid_t pid = -1;
  REQUIRE(posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ) == 0);
  posix_spawn_file_actions_destroy(&actions);
  ::close(out[1]);
  ::close(err[1]);
  CommandResult result;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  pollfd fds[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
  int open_streams = 2;
  while (open_streams > 0 && std::chrono::steady_clock::now() < deadline) {
    ::poll(fds, 2, 100);
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP))) continue;
      char buf[65536];
      ssize_t n = ::read(fds[i].fd, buf, sizeof buf);
      if (n > 0) {
        (i == 0 ? result.out : result.err).append(buf, static_cast<std::size_t>(n));
      } else {
        ::close(fds[i].fd);
        fds[i].fd = -1;
        --open_streams;
      }
    }
  }
  for (auto& f : fds)
    if (f.fd >= 0) ::close(f.fd);
  if (open_streams > 0) ::kill(pid, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (open_streams > 0) result.status = -1;
  else if (WIFEXITED(status)) result.status = WEXITSTATUS(status);
  else result.status = 128 + WTERMSIG(status);
  return result;
}

pid_t spawn_immortal(const std::vector<std::string>& args, const std::string& output_file) {
  std::vector<std::string> full{IMMORTAL_BINARY};
  full.insert(full.end(), args.begin(), args.end());
  auto argv = argv_of(full);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, output_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  pid_t pid = -1;
  REQUIRE(posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ) == 0);
  posix_spawn_file_actions_destroy(&actions);
  return pid;
}

std::vector<pid_t> qemu_processes(const std::string& instance) {
  std::vector<pid_t> pids;
  std::string needle = "process=immortal-" + instance;
  DIR* proc = ::opendir("/proc");
  while (dirent* e = proc ? ::readdir(proc) : nullptr) {
    pid_t pid = std::atoi(e->d_name);
    if (pid <= 0) continue;
    std::string cmdline = read_file(std::string("/proc/") + e->d_name + "/cmdline");
    for (auto& c : cmdline)
      if (c == '\0') c = ' ';
    // Exact match of the name: it ends the argument.
    auto at = cmdline.find(needle + " ");
    if (at != std::string::npos && cmdline.find("qemu-system") != std::string::npos) pids.push_back(pid);
  }
  if (proc) ::closedir(proc);
  return pids;
}

bool process_alive(pid_t pid) {
  // A zombie is dead for our purposes.
  std::string stat = read_file("/proc/" + std::to_string(pid) + "/stat");
  if (stat.empty()) return false;
  auto paren = stat.rfind(')');
  return paren == std::string::npos || paren + 2 >= stat.size() || stat[paren + 2] != 'Z';
}

bool wait_until(const std::function<bool()>& condition, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (condition()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return condition();
}

std::string initrd_with_agent_script(const std::string& script) {
  std::string dir = scratch_dir() + "/" + unique_name("initrd");
  REQUIRE(::mkdir(dir.c_str(), 0700) == 0);
  REQUIRE(::mkdir((dir + "/root").c_str(), 0700) == 0);
  REQUIRE(::mkdir((dir + "/root/sbin").c_str(), 0755) == 0);
  {
    std::ofstream s(dir + "/root/sbin/immortal-agent");
    s << "#!/bin/sh\n" << script;
  }
  REQUIRE(::chmod((dir + "/root/sbin/immortal-agent").c_str(), 0755) == 0);
  // The kernel unpacks concatenated archives in order; a later file replaces an earlier one.
  std::string cmd = "cd '" + dir + "/root' && echo sbin/immortal-agent | cpio -o -H newc --quiet -R 0:0 | gzip > ../extra.gz && cat '" +
                    guest_dir() + "/initrd.img' ../extra.gz > ../initrd.img";
  REQUIRE(std::system(cmd.c_str()) == 0);
  return dir + "/initrd.img";
}

std::string run_shell(const std::string& command) {
  std::string out;
  FILE* p = ::popen(command.c_str(), "r");
  if (!p) return out;
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  ::pclose(p);
  return out;
}

int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  socklen_t len = sizeof a;
  REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0);
  ::close(fd);
  return ntohs(a.sin_port);
}

std::string http_get(int port, const std::string& path, std::chrono::seconds timeout) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string response;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
    std::string request = "GET " + path + " HTTP/1.0\r\n\r\n";
    if (::write(fd, request.data(), request.size()) == static_cast<ssize_t>(request.size())) {
      auto deadline = std::chrono::steady_clock::now() + timeout;
      char buf[4096];
      while (std::chrono::steady_clock::now() < deadline) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, 200) <= 0) continue;
        ssize_t n = ::read(fd, buf, sizeof buf);
        if (n <= 0) break;
        response.append(buf, static_cast<std::size_t>(n));
      }
    }
  }
  ::close(fd);
  return response;
}

// The exec request `immortal exec` sends, made from this process: the tests run thousands of guest
// commands, and each start of the sanitized CLI costs a quarter of a second of a core. The result
// is the CLI's (vmm::exec_outcome: its exit status, output and messages); `exec` itself is tested
// through the CLI (cli_test.cc).
CommandResult guest_sh(const std::string& name, const std::string& script, std::chrono::seconds timeout) {
  constexpr int kExecTimeout = 60;  // the CLI's default
  nlohmann::json request = {{"command", "exec"}, {"argv", {"sh", "-c", script}}, {"timeout_ms", kExecTimeout * 1000}};
  try {
    auto o = vmm::exec_outcome(vmm::control_call(control_socket_of(name), request, Deadline::in(timeout)), kExecTimeout);
    return {o.status, std::move(o.out), std::move(o.err)};
  } catch (const Error& e) {
    return {e.exit_code(), "", std::string("immortal: ") + e.what() + "\n"};
  } catch (const std::exception& e) {
    return {static_cast<int>(ExitCode::failure), "", std::string("immortal: ") + e.what() + "\n"};
  }
}

int inject(const std::string& name, const std::string& cls) {
  auto r = run_cli({"inject", name, cls}, std::chrono::seconds(60));
  INFO(r.err);
  REQUIRE(r.status == 0);
  auto at = r.out.find("victim pid ");
  REQUIRE(at != std::string::npos);
  // "victim pid unknown": the victim crashed the guest before the agent could report its pid.
  if (r.out.compare(at + 11, 7, "unknown") == 0) return 0;
  return std::stoi(r.out.substr(at + 11));
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

}  // namespace immortal::test
