// Stand-ins for immortal-repair-agent in unit tests: shell scripts that play a misbehaving agent
// (answers nonsense, dies, lingers, never answers), in a directory of their own that goes away
// with the object.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

namespace immortal::test {

class FakeAgents {
 public:
  explicit FakeAgents(const std::string& tag)
      : dir_(std::filesystem::temp_directory_path() / ("immortal-" + tag + "-" + std::to_string(::getpid()))) {
    std::filesystem::create_directories(dir_);
  }
  ~FakeAgents() {
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }
  FakeAgents(const FakeAgents&) = delete;
  FakeAgents& operator=(const FakeAgents&) = delete;

  const std::string& dir() const { return dir_; }
  // An executable /bin/sh script `name` running body; its path.
  std::string script(const std::string& name, const std::string& body) const {
    std::string path = dir_ + "/" + name;
    std::ofstream(path) << "#!/bin/sh\n" << body << "\n";
    std::filesystem::permissions(path, std::filesystem::perms::owner_all);
    return path;
  }

 private:
  std::string dir_;
};

}  // namespace immortal::test
