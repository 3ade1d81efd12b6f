// immortal-agent: the in-guest agent. A static binary started (and respawned) by the guest's
// init. It opens its virtio-serial port, says hello, sends a heartbeat every second and
// serves the host's requests (ping, exec, poweroff). With each heartbeat it looks for serial
// ports that stopped sending with output queued (serial_watch.h). One poll loop, no threads.
//
// The protocol is in protocol/ and docs/protocol.md.

#include "protocol/frame.h"
#include "protocol/messages.h"
#include "serial_watch.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <list>
#include <sstream>
#include <string>
#include <vector>

namespace {

using namespace immortal::agent;

constexpr char kAgentVersion[] = "0.1.0";
constexpr int kHeartbeatMs = 1000;
constexpr std::size_t kMaxRunning = 32;
constexpr std::size_t kMaxOutbox = 8 << 20;  // do not buffer without bound if the host stalls

std::uint64_t now_ms() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000 + static_cast<std::uint64_t>(ts.tv_nsec) / 1'000'000;
}

std::string read_line(const char* path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

std::uint64_t uptime_ms() {
  std::ifstream in("/proc/uptime");
  double seconds = 0;
  in >> seconds;
  return static_cast<std::uint64_t>(seconds * 1000);
}

void say(const std::string& text) { std::fprintf(stderr, "immortal-agent: %s\n", text.c_str()); }

// The /dev node of the virtio-serial port named kPortName, found through sysfs (the guest has
// no udev to make /dev/virtio-ports/ links).
std::string find_port() {
  DIR* dir = opendir("/sys/class/virtio-ports");
  if (!dir) return {};
  std::string found;
  while (dirent* e = readdir(dir)) {
    if (e->d_name[0] == '.') continue;
    std::string name = read_line((std::string("/sys/class/virtio-ports/") + e->d_name + "/name").c_str());
    if (name == kPortName) {
      found = std::string("/dev/") + e->d_name;
      break;
    }
  }
  closedir(dir);
  return found;
}

pid_t launch(const std::vector<std::string>& argv, int out, int err, std::string* error);
FileData read_chunk(const ReadFileRequest& request);

struct Running {
  std::uint64_t id = 0;
  pid_t pid = -1;
  int out = -1, err = -1;
  std::uint64_t deadline = 0;
  std::uint64_t reaped_at = 0;
  bool reaped = false;
  ExecResult result;
};

class Agent {
 public:
  explicit Agent(int port) : port_(port) {}
  [[noreturn]] void run();

 private:
  void send(MessageType type, const std::string& payload);
  void flush();
  void on_frame(const Frame& frame);
  void start_exec(const ExecRequest& request);
  void start_spawn(const SpawnRequest& request);
  void collect(Running& r, int& fd, std::string& sink);
  void check_children();

  int port_;
  bool connected_ = false;
  FrameDecoder decoder_;
  std::string outbox_;
  std::uint64_t heartbeat_seq_ = 0;
  std::uint64_t next_heartbeat_ = 0;
  std::list<Running> running_;
  std::vector<pid_t> spawned_;
  std::string modules_seen_;
  std::uint64_t modules_generation_ = 1;
  std::uint64_t modules_generation();
  SerialWatch serial_;
};

// Counts changes of /proc/modules (module loads and unloads), so the host knows when to
// refresh its profile of the guest.
std::uint64_t Agent::modules_generation() {
  // Names, sizes and load addresses, not use counts (they change without any load or unload);
  // and each module's sysfs directory's inode, which is new at every load: a module unloaded
  // and loaded again between two heartbeats often lands at the same address (with the same
  // size when it is the same build), and its symbols and BTF must still be read again.
  std::ifstream in("/proc/modules");
  std::string now;
  for (std::string line; std::getline(in, line);) {
    std::istringstream fields(line);
    std::string name, size, refs, deps, state, address;
    fields >> name >> size >> refs >> deps >> state >> address;
    struct stat st{};
    unsigned long long inode = name.find('/') == std::string::npos && ::stat(("/sys/module/" + name).c_str(), &st) == 0 ? st.st_ino : 0;
    now += name + " " + size + " " + address + " " + std::to_string(inode) + "\n";
  }
  if (now != modules_seen_) {
    if (!modules_seen_.empty()) ++modules_generation_;
    modules_seen_ = std::move(now);
  }
  return modules_generation_;
}

void Agent::send(MessageType type, const std::string& payload) {
  if (outbox_.size() > kMaxOutbox) return;  // the host is not reading; drop, it will see no heartbeat
  outbox_ += encode_frame(type, payload);
  flush();
}

void Agent::flush() {
  while (!outbox_.empty()) {
    ssize_t n = write(port_, outbox_.data(), outbox_.size());
    if (n > 0) {
      outbox_.erase(0, static_cast<std::size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    return;  // EAGAIN: poll for POLLOUT; other errors: the host went away
  }
}

void Agent::on_frame(const Frame& frame) {
  try {
    switch (frame.type) {
      case MessageType::ping:
        send(MessageType::pong, to_payload(parse_ping(frame.payload)));
        break;
      case MessageType::exec:
        start_exec(parse_exec_request(frame.payload));
        break;
      case MessageType::spawn:
        start_spawn(parse_spawn_request(frame.payload));
        break;
      case MessageType::read_file:
        send(MessageType::file_data, to_payload(read_chunk(parse_read_file(frame.payload))));
        break;
      case MessageType::poweroff:
        say("powering off at the host's request");
        if (fork() == 0) {
          // init's own poweroff runs its shutdown actions; without one, power off directly.
          execlp("poweroff", "poweroff", static_cast<char*>(nullptr));
          sync();
          reboot(RB_POWER_OFF);
          _exit(127);
        }
        break;
      default:
        send(MessageType::error, to_payload(ErrorMessage{std::nullopt, std::string("unexpected message ") + name_of(frame.type)}));
    }
  } catch (const ProtocolError& e) {
    send(MessageType::error, to_payload(ErrorMessage{request_id_of(frame.payload), e.what()}));
  }
}

// Forks and execs argv in a new session with the given stdout/stderr. Returns the pid, or -1
// with *error set (fork failed, or exec failed: its errno comes back through a CLOEXEC pipe).
pid_t launch(const std::vector<std::string>& argv, int out, int err, std::string* error) {
  int status[2];
  if (pipe2(status, O_CLOEXEC) != 0) {
    *error = std::string("pipe: ") + std::strerror(errno);
    return -1;
  }
  pid_t pid = fork();
  if (pid == 0) {
    setsid();
    int null = open("/dev/null", O_RDONLY);
    dup2(null, 0);
    dup2(out, 1);
    dup2(err, 2);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    signal(SIGPIPE, SIG_DFL);
    execvp(args[0], args.data());
    int e = errno;
    (void)!write(status[1], &e, sizeof e);
    _exit(127);
  }
  close(status[1]);
  if (pid < 0) {
    *error = std::string("fork: ") + std::strerror(errno);
  } else {
    int e = 0;
    if (read(status[0], &e, sizeof e) == static_cast<ssize_t>(sizeof e)) {
      *error = "cannot execute " + argv[0] + ": " + std::strerror(e);
      waitpid(pid, nullptr, 0);
      pid = -1;
    }
  }
  close(status[0]);
  return pid;
}

void Agent::start_exec(const ExecRequest& request) {
  if (running_.size() >= kMaxRunning) {
    send(MessageType::error, to_payload(ErrorMessage{request.id, "too many commands running"}));
    return;
  }
  int out[2], err[2];
  if (pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0) {
    send(MessageType::error, to_payload(ErrorMessage{request.id, std::string("pipe: ") + std::strerror(errno)}));
    return;
  }
  Running r;
  r.id = request.id;
  r.result.id = request.id;
  r.pid = launch(request.argv, out[1], err[1], &r.result.error);
  close(out[1]);
  close(err[1]);
  r.out = out[0];
  r.err = err[0];
  fcntl(r.out, F_SETFL, O_NONBLOCK);
  fcntl(r.err, F_SETFL, O_NONBLOCK);
  r.deadline = now_ms() + request.timeout_ms;
  running_.push_back(std::move(r));
}

FileData read_chunk(const ReadFileRequest& request) {
  FileData answer;
  answer.id = request.id;
  int fd = open(request.path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    answer.error = request.path + ": " + std::strerror(errno);
    return answer;
  }
  if (lseek(fd, static_cast<off_t>(request.offset), SEEK_SET) < 0) {
    answer.error = request.path + ": seek: " + std::strerror(errno);
    close(fd);
    return answer;
  }
  answer.data.resize(request.length);
  std::size_t have = 0;
  while (have < request.length) {
    ssize_t n = read(fd, answer.data.data() + have, request.length - have);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      answer.error = request.path + ": " + std::strerror(errno);
      answer.data.clear();
      close(fd);
      return answer;
    }
    if (n == 0) {
      answer.eof = true;
      break;
    }
    have += static_cast<std::size_t>(n);
  }
  answer.data.resize(have);
  close(fd);
  return answer;
}

void Agent::start_spawn(const SpawnRequest& request) {
  Spawned answer;
  answer.id = request.id;
  if (spawned_.size() >= kMaxRunning) {
    answer.error = "too many spawned commands running";
  } else {
    // Its output goes to the console, where it lands next to what the kernel says about it.
    int console = open("/dev/console", O_WRONLY | O_NOCTTY | O_CLOEXEC);
    if (console < 0) console = open("/dev/null", O_WRONLY | O_CLOEXEC);
    pid_t pid = launch(request.argv, console, console, &answer.error);
    close(console);
    if (pid > 0) {
      answer.pid = pid;
      spawned_.push_back(pid);
    }
  }
  send(MessageType::spawned, to_payload(answer));
}

void Agent::collect(Running& r, int& fd, std::string& sink) {
  char buf[16384];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n > 0) {
      std::size_t room = kMaxOutput - std::min(sink.size(), kMaxOutput);
      std::size_t take = std::min(room, static_cast<std::size_t>(n));
      sink.append(buf, take);
      if (take < static_cast<std::size_t>(n)) r.result.truncated = true;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return;
    close(fd);
    fd = -1;
    return;
  }
}

void Agent::check_children() {
  std::uint64_t now = now_ms();
  for (auto it = spawned_.begin(); it != spawned_.end();) {
    int status = 0;
    if (waitpid(*it, &status, WNOHANG) == 0) {
      ++it;
      continue;
    }
    // The guest's own record of how a spawned command (an injection victim) ended.
    char line[96];
    int n = WIFSIGNALED(status) ? std::snprintf(line, sizeof line, "immortal-agent: spawned pid %d killed by signal %d\n",
                                                static_cast<int>(*it), WTERMSIG(status))
                                : std::snprintf(line, sizeof line, "immortal-agent: spawned pid %d exited with status %d\n",
                                                static_cast<int>(*it), WEXITSTATUS(status));
    if (int kmsg = open("/dev/kmsg", O_WRONLY | O_CLOEXEC); kmsg >= 0) {
      (void)!write(kmsg, line, static_cast<std::size_t>(n));
      close(kmsg);
    }
    it = spawned_.erase(it);
  }
  for (auto it = running_.begin(); it != running_.end();) {
    Running& r = *it;
    if (r.out >= 0) collect(r, r.out, r.result.stdout_data);
    if (r.err >= 0) collect(r, r.err, r.result.stderr_data);
    if (!r.reaped && r.pid > 0) {
      int status = 0;
      if (waitpid(r.pid, &status, WNOHANG) == r.pid) {
        r.reaped = true;
        r.reaped_at = now;
        if (WIFEXITED(status)) r.result.exit_code = WEXITSTATUS(status);
        else r.result.signal = WTERMSIG(status);
      } else if (now >= r.deadline && !r.result.timed_out) {
        kill(-r.pid, SIGKILL);
        kill(r.pid, SIGKILL);
        r.result.timed_out = true;
      }
    } else if (r.pid <= 0) {
      r.reaped = true;
      r.result.exit_code = 127;
    }
    // Done when the command exited and its output is drained, or a background child of it
    // keeps the pipes open (give it 200 ms, then report without the rest).
    bool drained = r.out < 0 && r.err < 0;
    if (r.reaped && (drained || now - r.reaped_at > 200)) {
      if (r.out >= 0) close(r.out);
      if (r.err >= 0) close(r.err);
      send(MessageType::exec_result, to_payload(r.result));
      it = running_.erase(it);
    } else {
      ++it;
    }
  }
}

void Agent::run() {
  for (;;) {
    std::vector<pollfd> fds;
    fds.push_back({port_, static_cast<short>(POLLIN | (outbox_.empty() ? 0 : POLLOUT)), 0});
    for (auto& r : running_) {
      if (r.out >= 0) fds.push_back({r.out, POLLIN, 0});
      if (r.err >= 0) fds.push_back({r.err, POLLIN, 0});
    }
    std::uint64_t now = now_ms();
    int timeout = next_heartbeat_ > now ? static_cast<int>(next_heartbeat_ - now) : 0;
    if (!running_.empty()) timeout = std::min(timeout, 50);
    if (!connected_) timeout = std::min(timeout, 200);
    poll(fds.data(), fds.size(), timeout);

    short revents = fds[0].revents;
    if (revents & POLLHUP) {
      // The host side of the port is closed: nothing can be sent; start over when it returns.
      if (connected_) say("host disconnected");
      connected_ = false;
      decoder_ = FrameDecoder();
      outbox_.clear();
      if (running_.empty()) usleep(200 * 1000);
    } else {
      if (!connected_) {
        connected_ = true;
        Hello hello;
        hello.agent_version = kAgentVersion;
        utsname u{};
        uname(&u);
        hello.kernel_release = u.release;
        hello.hostname = u.nodename;
        hello.boot_id = read_line("/proc/sys/kernel/random/boot_id");
        hello.uptime_ms = uptime_ms();
        hello.modules_generation = modules_generation();
        send(MessageType::hello, to_payload(hello));
        next_heartbeat_ = now_ms() + kHeartbeatMs;
      }
      if (revents & POLLIN) {
        char buf[65536];
        ssize_t n = read(port_, buf, sizeof buf);
        if (n > 0) {
          decoder_.feed(std::string_view(buf, static_cast<std::size_t>(n)));
          try {
            while (auto frame = decoder_.next()) on_frame(*frame);
          } catch (const ProtocolError& e) {
            // The stream cannot be resynchronised; report and wait for the host to reconnect.
            send(MessageType::error, to_payload(ErrorMessage{std::nullopt, e.what()}));
            say(std::string("protocol error from host: ") + e.what());
            decoder_ = FrameDecoder();
          }
        }
      }
      if (revents & POLLOUT) flush();
      if (now_ms() >= next_heartbeat_) {
        // First, so that what we say goes out on a console that had stalled.
        for (const auto& port : serial_.check(now_ms())) say("a serial port had stopped sending with output queued; its interrupt enables were written again: " + port);
        send(MessageType::heartbeat,
             to_payload(Heartbeat{++heartbeat_seq_, uptime_ms(), modules_generation(), serial_.rearmed()}));
        next_heartbeat_ = now_ms() + kHeartbeatMs;
      }
    }
    check_children();
  }
}

}  // namespace

int main() {
  signal(SIGPIPE, SIG_IGN);
  // A tcsetattr() on the console we may have as controlling terminal, from outside its foreground
  // group, would stop us (serial_watch.h); ignored, it is allowed.
  signal(SIGTTOU, SIG_IGN);
  std::string path;
  for (int i = 0; path.empty(); ++i) {
    path = find_port();
    if (path.empty()) {
      if (i == 50) say(std::string("waiting for virtio-serial port ") + kPortName);
      usleep(100 * 1000);
    }
  }
  int port = open(path.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (port < 0) {
    say("cannot open " + path + ": " + std::strerror(errno));
    sleep(1);
    return 1;  // init respawns us
  }
  say("serving on " + path);
  Agent(port).run();
}
