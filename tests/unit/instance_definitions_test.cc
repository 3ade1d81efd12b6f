// Saved instance definitions (immortal define/start/autostart/undefine): what is written is read
// back, and a damaged, foreign, newer or planted file is refused with the right exit status.
#include "base/error.h"
#include "instance_definitions.h"

#include "support/exit_code.h"

#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>

using namespace immortal;
using immortal::test::code_of;
using namespace immortal::vmm;
using json = nlohmann::json;

namespace {

std::string temp_dir() {
  char tmpl[] = "/tmp/immortal-defs-XXXXXX";
  REQUIRE(::mkdtemp(tmpl));
  return tmpl;
}

}  // namespace

TEST_CASE("definitions are saved privately and read back; damaged ones are refused", "[definitions]") {
  std::string root = temp_dir();
  DefinitionStore store(root + "/config");
  CHECK_FALSE(store.load("web").has_value());
  CHECK(store.all().empty());

  store.save({"web", true, {{"memory", "1G"}, {"disks", {"/srv/web.qcow2,format=qcow2"}}}});
  auto web = store.load("web");
  REQUIRE(web.has_value());
  CHECK(web->autostart);
  CHECK(web->settings["memory"] == "1G");
  CHECK(web->settings["name"] == "web");  // the file's name is the instance's
  struct stat st {};
  REQUIRE(::stat(store.directory().c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0700);
  REQUIRE(::stat((store.directory() + "/web.json").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);

  store.save({"db", false, json::object()});
  auto all = store.all();
  REQUIRE(all.size() == 2);
  CHECK(all[0].name == "db");
  CHECK(all[1].name == "web");

  auto write = [&](const std::string& name, const std::string& text) {
    std::ofstream(store.directory() + "/" + name + ".json") << text;
  };
  write("torn", "{\"format\": \"immortal-instance-def");
  CHECK(code_of([&] { store.load("torn"); }) == ExitCode::bad_input);
  write("foreign", R"({"format": "something-else", "version": 1, "settings": {}})");
  CHECK(code_of([&] { store.load("foreign"); }) == ExitCode::bad_input);
  write("newer", R"({"format": "immortal-instance-definition", "version": 99, "settings": {}})");
  CHECK(code_of([&] { store.load("newer"); }) == ExitCode::unsupported);
  write("typed", R"({"format": "immortal-instance-definition", "version": 1, "autostart": "yes", "settings": {}})");
  CHECK(code_of([&] { store.load("typed"); }) == ExitCode::bad_input);
  // A symbolic link planted where a definition goes is not followed.
  REQUIRE(::symlink("/etc/passwd", (store.directory() + "/planted.json").c_str()) == 0);
  CHECK(code_of([&] { store.load("planted"); }) == ExitCode::bad_input);
  std::vector<std::string> problems;
  CHECK(store.all(&problems).size() == 2);  // the good ones still
  CHECK(problems.size() == 5);

  CHECK(code_of([&] { store.load("../etc/x"); }) == ExitCode::usage);
  CHECK(code_of([&] { store.save({"../x", false, json::object()}); }) == ExitCode::usage);
  CHECK(store.remove("db"));
  CHECK_FALSE(store.remove("db"));
  CHECK_FALSE(store.load("db").has_value());
  std::system(("rm -rf '" + root + "'").c_str());
}
