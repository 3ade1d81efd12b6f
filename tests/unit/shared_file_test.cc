// Files the host's instances share (vmm/repair/shared_file.h): written once, held by each user,
// removed by the next user once nobody holds them. Each SharedFile opens its own descriptor, so two
// in one process hold and exclude each other as two supervisors' would.
#include "base/error.h"
#include "repair/shared_file.h"

#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

using namespace immortal;
using namespace immortal::vmm;
namespace fs = std::filesystem;

namespace {

struct TempDir {
  std::string path = (fs::temp_directory_path() / ("immortal-shared-file-" + std::to_string(::getpid()))).string();
  ~TempDir() { fs::remove_all(path); }
};

}  // namespace

TEST_CASE("shared file: written once, held by every user, removed by a later one once nobody holds it", "[shared-file]") {
  TempDir t;
  std::string dir = t.path + "/.repair-shared";
  int writes = 0;
  auto write = [&](const std::string& text) {
    return [&, text](const std::string& path) {
      ++writes;
      std::ofstream(path) << text;
    };
  };
  SharedFile a = SharedFile::acquire(dir, "one.img", write("first"));
  SharedFile b = SharedFile::acquire(dir, "one.img", write("second"));
  CHECK(writes == 1);  // the second user found it
  CHECK(a.path() == dir + "/one.img");
  CHECK(b.path() == a.path());
  CHECK(a.bytes() == 5);
  CHECK(a.held());
  struct stat st {};
  REQUIRE(::stat(dir.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0700);  // made private

  // Another file (an upgraded agent's) leaves the held one alone …
  SharedFile c = SharedFile::acquire(dir, "two.img", write("other"));
  CHECK(fs::exists(a.path()));
  // … and the next user after its holders went removes it.
  a = SharedFile();
  CHECK(remove_unheld_files(dir, "two.img") == 0);  // b holds it still
  b = SharedFile();
  SharedFile d = SharedFile::acquire(dir, "two.img", write("other"));
  CHECK_FALSE(fs::exists(dir + "/one.img"));
  CHECK(fs::exists(c.path()));
  CHECK(writes == 2);

  // A partial file a dead writer left goes; one a live writer holds stays.
  std::ofstream(dir + "/three.img.partial.1") << "torn";
  int writer = ::open((dir + "/four.img.partial.2").c_str(), O_WRONLY | O_CREAT, 0600);
  REQUIRE(writer >= 0);
  REQUIRE(::flock(writer, LOCK_EX) == 0);
  CHECK(remove_unheld_files(dir, "two.img") == 1);
  CHECK_FALSE(fs::exists(dir + "/three.img.partial.1"));
  CHECK(fs::exists(dir + "/four.img.partial.2"));
  ::close(writer);
}

TEST_CASE("shared file: a writer that fails leaves nothing behind, and bad names are refused", "[shared-file]") {
  TempDir t;
  std::string dir = t.path + "/shared";
  CHECK_THROWS_AS(SharedFile::acquire(dir, "x.img", [](const std::string&) { throw Error(ExitCode::failure, "no agent"); }),
                  Error);
  CHECK(fs::is_empty(dir));
  for (const char* bad : {"", "../escape", ".hidden", "a/b"})
    CHECK_THROWS_AS(SharedFile::acquire(dir, bad, [](const std::string&) {}), Error);
}
