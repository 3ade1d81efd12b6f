// The repair protocol's pieces: what crosses between the supervisor and the repair agent (crash
// records, answers, plans), the mailbox both sides poll, the healthy copy on disk, the integrity
// check, and the supervisor's validation of code restores. Untrusted input gets Error(bad_input).
#include "base/content_digest.h"
#include "base/error.h"
#include "base/zstd_frame.h"
#include "kernel/symbols.h"
#include "engine/healthy_image.h"
#include "engine/repair_plan.h"
#include "engine/repair_service.h"
#include "engine/text_integrity.h"
#include "protocol/mailbox.h"
#include "protocol/payload.h"
#include "recovery/plan_validation.h"
#include "repair/repair_broker.h"
#include "repair/repair_engine.h"
#include "repair/repair_image.h"
#include "support/fake_kernel.h"

#include <catch2/catch.hpp>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>

using namespace immortal;
using nlohmann::json;

namespace {

repair::RepairPlan sample_plan() {
  repair::RepairPlan plan;
  plan.resume = true;
  plan.reason = "restore-code, kill-task";
  plan.vcpu = 1;
  repair::RepairAction restore{"restore-code", "3 bytes", {{0xffffffffc0001001, {0x0b, 0x0f, 0x0b}, {0x1f, 0x44, 0x00}, true}}, {}, json::object(), {}};
  repair::RepairAction kill{"kill-task", "pid 7", {}, {{"rip", 0x10, 0x20}, {"rdi", 0, 9}}, {{"pid", 7}}, {}};
  plan.actions = {restore, kill};
  return plan;
}

std::unique_ptr<Kernel> kernel_with(test::VectorMemory& ram) {
  test::map_kernel_image(ram);
  return Kernel::assemble(ram, KernelLayout{0x1000},
                          SymbolTable::from_kallsyms("ffffffff80100000 T _stext\nffffffff80100000 T func\n"
                                                     "ffffffff80100040 T other\nffffffff80101000 T _etext\n"
                                                     "ffffffff80100080 T wake_up_state\n"
                                                     "ffffffff801000c0 T ct_nmi_exit\n"
                                                     "ffffffff80100100 T release_sock\n"
                                                     "ffffffff80100140 T mutex_unlock\n"
                                                     "0000000000000010 D __preempt_count\n"
                                                     "0000000000000020 D current_task\n"
                                                     "ffffffff80200000 D tainted_mask\n"
                                                     "ffffffff80200010 b hung_task_call_panic\n"),
                          test::linux_like_types(), "test");
}

// A kernel, a healthy copy with one module "drv" (its text all nops) and a crash on vCPU 1 in
// it: what the plan-validation tests check plans against.
struct Validation {
  test::VectorMemory ram{4 << 20};
  std::unique_ptr<Kernel> kernel = kernel_with(ram);
  repair::HealthyImage healthy = [] {
    repair::HealthyImage h;
    h.regions.push_back(repair::HealthyRegion::holding("drv text", "text", "drv", 0xffffffffc0001000, std::vector<std::uint8_t>(0x100, 0x90)));
    h.modules.push_back({"drv", 0xffffffffc0001000, 0x2000, 0x100, {{0xffffffffc0001100, 0xffffffffc0003000}}});
    return h;
  }();
  vmm::PlanContext context{1, "drv", 0, healthy.modules[0]};

  repair::RepairPlan plan_of(repair::RepairAction action) const {
    repair::RepairPlan plan;
    plan.resume = true;
    plan.vcpu = 1;
    plan.actions.push_back(std::move(action));
    return plan;
  }
  bool refused(const repair::RepairPlan& p) const {
    try {
      vmm::validate_plan(p, context, *kernel, &healthy);
    } catch (const Error&) {
      return true;
    }
    return false;
  }
};

}  // namespace

TEST_CASE("repair protocol: crash records and plans survive their JSON form", "[repair]") {
  repair::CrashRecord r;
  r.id = 3;
  r.time = "2026-11-23T10:00:00.000Z";
  r.caught_by = "breakpoint";
  r.intercepted_at = "panic";
  r.vcpu = 1;
  r.registers.resize(2);
  r.registers[1].rip = 0xffffffff81000000;
  r.registers[1].gs_base = 0xffff888000000000;
  r.registers[1].cr4 = 0x370ef0;
  auto back = repair::crash_record_from_json(repair::to_json(r));
  CHECK(back.id == 3);
  CHECK(back.vcpu == 1);
  CHECK(back.registers.size() == 2);
  CHECK(back.registers[1].rip == r.registers[1].rip);
  CHECK(back.registers[1].cr4 == r.registers[1].cr4);
  CHECK(repair::to_json(back) == repair::to_json(r));

  auto plan = sample_plan();
  auto again = repair::plan_from_json(plan.to_json());
  CHECK(again.to_json() == plan.to_json());
  CHECK(again.actions[0].writes[0].code);
  CHECK(again.actions[1].registers[1].to == 9);
}

TEST_CASE("repair protocol: malformed records and plans are refused", "[repair]") {
  auto bad_input = [](const auto& f) {
    try {
      f();
    } catch (const Error& e) {
      return e.code() == ExitCode::bad_input;
    }
    return false;
  };
  json record = {{"id", 1}, {"time", "t"}, {"caught_by", "breakpoint"}, {"intercepted_at", "panic"}, {"vcpu", 0},
                 {"registers", json::array({{{"rip", "0x10"}}})}};
  CHECK_NOTHROW(repair::crash_record_from_json(record));
  for (auto mutate : std::vector<std::function<void(json&)>>{
           [](json& j) { j["vcpu"] = 5; },
           [](json& j) { j["registers"] = json::array(); },
           [](json& j) { j["registers"][0]["rip"] = "0xzz"; },
           [](json& j) { j["registers"][0]["rip"] = "0x11112222333344445"; },
           [](json& j) { j["registers"][0]["xmm0"] = "0x1"; },
           [](json& j) { j["id"] = "one"; },
           [](json& j) { j = json::array(); }}) {
    json j = record;
    mutate(j);
    CHECK(bad_input([&] { repair::crash_record_from_json(j); }));
  }
  json plan = sample_plan().to_json();
  for (auto mutate : std::vector<std::function<void(json&)>>{
           [](json& j) { j["actions"][0]["writes"][0]["new"] = "1f4"; },
           [](json& j) { j["actions"][0]["writes"][0]["new"] = "zz4400"; },
           [](json& j) { j["actions"][0]["writes"][0]["code"] = "yes"; },
           [](json& j) { j["actions"][1]["registers"][0]["new"] = 5; },
           [](json& j) { json one = j["actions"][1]; for (int i = 0; i < 100; ++i) j["actions"].push_back(one); },
           [](json& j) { j["actions"][0]["writes"][0]["new"] = std::string(2 * repair::kMaxWriteBytes + 2, 'a'); },
           [](json& j) { j.erase("resume"); }}) {
    json j = plan;
    mutate(j);
    CHECK(bad_input([&] { repair::plan_from_json(j); }));
  }
}

TEST_CASE("mailbox: a request and its answer cross; the agent's lengths are checked", "[repair]") {
  std::vector<std::uint64_t> memory(repair::kMailboxSize / 8);
  repair::Mailbox host(memory.data()), agent(memory.data());
  host.initialise();
  CHECK(agent.valid());
  CHECK(host.agent_state() == repair::AgentState::booting);
  agent.set_state(repair::AgentState::ready, "ready\x01!");
  CHECK(host.agent_state() == repair::AgentState::ready);
  CHECK(host.agent_status() == "ready?!");
  std::uint64_t seq = host.post_request("{\"q\":1}");
  CHECK(agent.request_seq() == seq);
  CHECK(agent.request() == "{\"q\":1}");
  CHECK(!host.take_response(seq));
  agent.post_response(seq, "{\"a\":2}");
  CHECK(host.take_response(seq) == std::string("{\"a\":2}"));
  CHECK(!host.take_response(seq + 1));
  // A hostile agent claims a huge answer: refused, not read.
  std::uint32_t huge = 0xffffffff;
  std::memcpy(reinterpret_cast<char*>(memory.data()) + 36, &huge, 4);
  CHECK_THROWS(host.take_response(seq));
  // A state word out of range counts as failed.
  std::uint32_t odd = 77;
  std::memcpy(reinterpret_cast<char*>(memory.data()) + 8, &odd, 4);
  CHECK(host.agent_state() == repair::AgentState::failed);
}

TEST_CASE("mailbox sessions: a slot's new user takes neither the state nor an answer of the agent of its last user",
          "[repair]") {
  std::vector<std::uint64_t> memory(repair::kMailboxSize / 8);
  repair::Mailbox host(memory.data()), old_agent(memory.data()), new_agent(memory.data());
  host.initialise(11);
  old_agent.serve(11);
  old_agent.set_state(repair::AgentState::ready, "ready for guest A");
  CHECK(host.agent_state() == repair::AgentState::ready);
  CHECK(host.session() == 11);
  // Guest B's supervisor takes the slot: A's agent is still there, ready, and answers late.
  host.initialise(42);
  CHECK(host.agent_state() == repair::AgentState::booting);
  std::uint64_t seq = host.post_request("{\"q\":1}");
  old_agent.post_response(seq, "{\"for\":\"A\"}");
  CHECK_FALSE(host.take_response(seq));
  // The fresh agent of B's session: its state and answer count.
  new_agent.serve(host.session());
  new_agent.set_state(repair::AgentState::waiting, "waiting");
  CHECK(host.agent_state() == repair::AgentState::waiting);
  new_agent.post_response(seq, "{\"for\":\"B\"}");
  CHECK(host.take_response(seq) == std::string("{\"for\":\"B\"}"));
  // A VM of one guest and the inline agent: session 0 on both sides, as before.
  host.initialise();
  repair::Mailbox plain(memory.data());
  plain.set_state(repair::AgentState::ready, "ready");
  CHECK(host.agent_state() == repair::AgentState::ready);
}

TEST_CASE("repair payload: files cross as a newc archive read in place; damage is refused", "[repair]") {
  std::map<std::string, std::string> files = {{"repair.json", "{}\n"}, {"profile/kallsyms", "ffffffff81000000 T _stext\n"},
                                              {"healthy/healthy.bin", std::string(5, '\0') + "x"}, {"empty", ""}};
  std::string archive = repair::write_payload(files);
  CHECK(archive.size() % 4 == 0);
  std::string window = archive + std::string(4096, '\0');  // the window's unused rest follows
  auto back = repair::read_payload(window);
  REQUIRE(back.size() == files.size());
  for (const auto& [name, bytes] : files) CHECK(back.at(name) == bytes);
  // The views point into the window itself: nothing was copied.
  CHECK(back.at("repair.json").data() >= window.data());
  CHECK(back.at("repair.json").data() < window.data() + window.size());

  // Debian's cpio lists it (the format is the kernel's initramfs one).
  std::string path = std::filesystem::temp_directory_path() / ("payload-test-" + std::to_string(::getpid()));
  { std::ofstream(path, std::ios::binary) << archive; }
  if (std::system("command -v cpio >/dev/null 2>&1") == 0) {
    std::string listed = path + ".list";
    REQUIRE(std::system(("cpio -t --quiet < '" + path + "' > '" + listed + "'").c_str()) == 0);
    std::ifstream in(listed);
    std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    CHECK(all == "empty\nhealthy/healthy.bin\nprofile/kallsyms\nrepair.json\n");
    std::filesystem::remove(listed);
  }
  std::filesystem::remove(path);

  CHECK_THROWS_AS(repair::read_payload(""), Error);
  CHECK_THROWS_AS(repair::read_payload(archive.substr(0, archive.size() - 120)), Error);  // no trailer
  CHECK_THROWS_AS(repair::read_payload(archive.substr(0, 200)), Error);                   // cut inside a file
  std::string bad_magic = archive;
  bad_magic[5] = '2';
  CHECK_THROWS_AS(repair::read_payload(bad_magic), Error);
  std::string bad_hex = archive;
  bad_hex[6 + 8 * 6] = 'g';  // the first file's size
  CHECK_THROWS_AS(repair::read_payload(bad_hex), Error);
  std::string huge = archive;
  huge.replace(6 + 8 * 6, 8, "7fffffff");  // a size past the end
  CHECK_THROWS_AS(repair::read_payload(huge), Error);
  std::string twice = repair::write_payload({{"a", "1"}});
  twice = twice.substr(0, twice.size() - 124) + twice;  // "a" twice, then the trailer
  CHECK_THROWS_AS(repair::read_payload(twice), Error);
}

TEST_CASE("repair image: the supervisor reads its healthy copy where the payload holds it, slot by slot", "[repair]") {
  namespace fs = std::filesystem;
  fs::path dir = fs::temp_directory_path() / ("repair-image-test-" + std::to_string(::getpid()));
  // The profile apart from the image's directory (building an image clears what older versions staged there).
  fs::create_directories(dir / "guest-profile" / "btf");
  for (const char* f : {"profile.json", "kallsyms", "modules", "btf/vmlinux"}) std::ofstream(dir / "guest-profile" / f) << f;
  auto healthy_with = [](std::uint8_t fill) {
    repair::HealthyImage h;
    h.release = "6.1.0-test";
    h.regions.push_back(repair::HealthyRegion::holding("kernel text", "text", "", 0xffffffff81000000, std::vector<std::uint8_t>(3 * 4096 + 5, fill)));
    h.regions.push_back(repair::HealthyRegion::holding("drv text", "text", "drv", 0xffffffffc0001000, std::vector<std::uint8_t>(0x100, 0x90)));
    h.modules.push_back({"drv", 0xffffffffc0001000, 0x2000, 0x100, {{0xffffffffc0001100, 0xffffffffc0003000}}});
    return h;
  };
  vmm::Machine::RamFile ram{-1, 1 << 20, {}};
  auto image = vmm::build_repair_image(dir.string(), "", "/bin/sh", (dir / "guest-profile").string(), healthy_with(0xcc), ram);
  CHECK(image.initrd == dir.string() + "/initrd.img");  // no shared directory: the instance's own
  CHECK_FALSE(image.initrd_file.held());
  {
    // With one, the host's instances boot one initramfs per agent, written by the first.
    std::string shared = (dir / "shared").string();
    auto one = vmm::build_repair_image((dir / "one").string(), shared, "/bin/sh", (dir / "guest-profile").string(), healthy_with(0xcc), ram);
    auto two = vmm::build_repair_image((dir / "two").string(), shared, "/bin/sh", (dir / "guest-profile").string(), healthy_with(0xcc), ram);
    CHECK(one.initrd_problem.empty());
    CHECK(one.initrd.starts_with(shared + "/initrd-v1-"));
    CHECK(two.initrd == one.initrd);
    CHECK(one.initrd_file.held());
    CHECK(one.initrd_bytes == fs::file_size(one.initrd));
    CHECK_FALSE(fs::exists(dir / "one" / "initrd.img"));
  }
  auto same_as = [](const repair::HealthyImage& a, const repair::HealthyImage& b) {
    if (a.regions.size() != b.regions.size() || a.modules.size() != b.modules.size()) return false;
    for (std::size_t i = 0; i < a.regions.size(); ++i) {
      if (a.regions[i].address != b.regions[i].address || a.regions[i].size() != b.regions[i].size()) return false;
      repair::RegionReader ra(a.regions[i]), rb(b.regions[i]);
      std::uint64_t n = a.regions[i].size();
      if (n && std::memcmp(ra.at(0, n), rb.at(0, n), n) != 0) return false;
    }
    return true;
  };
  auto first = vmm::healthy_in_payload(image);
  CHECK(same_as(*first, healthy_with(0xcc)));
  // Read in place: the regions' bytes lie packed in the payload's mapping, not in a copy of the
  // supervisor's; their digests are made for the precheck.
  CHECK(first->regions[0].bytes.empty());
  CHECK(first->regions[0].is_packed());
  CHECK(first->regions[0].digests.size() == 4);  // 3 pages and 5 bytes
  CHECK(first->find(0xffffffffc0001010)->module == "drv");

  // A new profile goes into the other slot; the copy taken again reads the new bytes there.
  REQUIRE(vmm::rewrite_repair_payload(image, (dir / "guest-profile").string(), healthy_with(0x0f), ram));
  CHECK(image.payload_offset == image.slot_bytes);
  auto second = vmm::healthy_in_payload(image);
  CHECK(same_as(*second, healthy_with(0x0f)));
  CHECK(*repair::RegionReader(second->regions[0]).at(0, 1) == 0x0f);
  fs::remove_all(dir);
}

TEST_CASE("repair image: the payload leaves to the host's files what they hold of this profile", "[repair]") {
  namespace fs = std::filesystem;
  fs::path dir = fs::temp_directory_path() / ("repair-part-test-" + std::to_string(::getpid()));
  fs::create_directories(dir / "guest-profile" / "btf");
  const std::uint64_t base = 0xffffffffa3200000u;
  std::string kallsyms = "0000000000001000 D per_cpu_thing\n";
  for (int i = 0; i < 500; ++i) kallsyms += fmt::format("{:016x} T fn_{}\n", base + 32u * static_cast<unsigned>(i), i);
  kallsyms += "ffffffffc0600000 t drv_fn\t[drv]\n";
  const std::string btf = "not really BTF, but the supervisor only compares it";
  std::ofstream(dir / "guest-profile" / "kallsyms") << kallsyms;
  std::ofstream(dir / "guest-profile" / "btf" / "vmlinux") << btf;
  for (const char* f : {"profile.json", "modules"}) std::ofstream(dir / "guest-profile" / f) << f;
  repair::HealthyImage healthy;
  healthy.release = "6.1.0-test";
  healthy.regions.push_back(repair::HealthyRegion::holding("kernel text", "text", "", base, std::vector<std::uint8_t>(4096, 0xcc)));
  vmm::Machine::RamFile ram{-1, 1 << 20, {}};
  auto payload_files = [](const vmm::RepairImage& image) {
    std::string bytes(image.payload_bytes, '\0');
    REQUIRE(::pread(image.payload.get(), bytes.data(), bytes.size(), static_cast<off_t>(image.payload_offset)) ==
            static_cast<ssize_t>(bytes.size()));
    std::map<std::string, std::string> out;
    for (const auto& [name, view] : repair::read_payload(bytes)) out.emplace(name, std::string(view));
    return out;
  };

  vmm::PayloadKernelPart part;
  part.symbols = SymbolTable::from_kallsyms(kallsyms).image_symbols();
  part.symbols_base = base;
  part.btf_digest = content_digest(std::span(reinterpret_cast<const std::uint8_t*>(btf.data()), btf.size()));
  part.btf_bytes = btf.size();
  part.orc_digest = std::string(32, 'a');  // compared with the guest's memory by the supervisor
  part.orc_bytes = 1000;
  auto image = vmm::build_repair_image(dir.string(), "", "/bin/sh", (dir / "guest-profile").string(), healthy, ram, part);
  CHECK(image.from_host.names == std::vector<std::string>{"kernel BTF", "kernel image symbols", "kernel image unwind tables"});
  CHECK(image.from_host.digests.orc == part.orc_digest);
  CHECK(image.from_host.kept_why.empty());
  CHECK(image.from_host.digests.symbols == part.symbols->digest());
  CHECK(image.from_host.digests.btf == part.btf_digest);
  auto files = payload_files(image);
  CHECK_FALSE(files.count("profile/btf/vmlinux.zst"));
  REQUIRE(files.count("profile/kallsyms.zst"));
  std::string rest = zstd_unpack(files["profile/kallsyms.zst"], 1 << 20, "kallsyms");
  CHECK(rest == "0000000000001000 D per_cpu_thing\nffffffffc0600000 t drv_fn\t[drv]\n");
  json layout = json::parse(files["repair.json"]);
  CHECK(layout["kernel_symbols"]["digest"] == part.symbols->digest());
  CHECK(layout["kernel_symbols"]["base"] == base);
  CHECK(layout["kernel_btf"]["digest"] == part.btf_digest);
  CHECK(layout["kernel_btf"]["bytes"] == btf.size());
  CHECK(layout["kernel_orc"]["digest"] == part.orc_digest);
  CHECK(layout["kernel_orc"]["bytes"] == 1000);
  // The agent's table from what the payload holds answers as the whole profile's.
  SymbolTable whole = SymbolTable::from_kallsyms(kallsyms), from_part = SymbolTable::from_kallsyms(rest, part.symbols, base);
  CHECK(from_part.size() == whole.size());
  CHECK(from_part.describe(base + 32 * 7 + 3) == whole.describe(base + 32 * 7 + 3));

  // Files that hold another kernel's parts (or this one at another slide) are not named: the
  // payload keeps its own, and says why.
  part.symbols_base = base + 0x200000;
  part.btf_digest = std::string(32, '0');
  part.orc_digest.clear();
  REQUIRE(vmm::rewrite_repair_payload(image, (dir / "guest-profile").string(), healthy, ram, part));
  CHECK(image.from_host.names.empty());
  CHECK(image.from_host.kept_why.size() == 2);
  CHECK(image.from_host.digests.symbols.empty());
  files = payload_files(image);
  CHECK(zstd_unpack(files["profile/kallsyms.zst"], 1 << 20, "kallsyms") == kallsyms);
  CHECK(zstd_unpack(files["profile/btf/vmlinux.zst"], 1 << 20, "btf") == btf);
  CHECK_FALSE(json::parse(files["repair.json"]).contains("kernel_symbols"));
  CHECK_FALSE(json::parse(files["repair.json"]).contains("kernel_orc"));
  fs::remove_all(dir);
}

TEST_CASE("healthy image: captured, saved and loaded; damage is refused", "[repair]") {
  test::VectorMemory ram(4 << 20);
  auto kernel = kernel_with(ram);
  std::vector<std::uint8_t> code(0x1000, 0x90);
  code[0x40] = 0xc3;
  ram.write(0x100000, std::as_bytes(std::span(code)));
  // No module list in this kernel: capture needs one.
  CHECK_THROWS(repair::capture_healthy_image(*kernel, "t"));
  repair::HealthyImage image;
  image.release = "test";
  image.regions.push_back(repair::HealthyRegion::holding("kernel text", "text", "", test::kva(0x100000), code));
  image.modules.push_back({"drv", 0xffffffffc0000000, 0x3000, 0x1000, {{0xffffffffc0001000, 0xffffffffc0003000}}});
  std::string dir = std::filesystem::temp_directory_path() / ("healthy-test-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  image.save(dir);
  auto back = repair::HealthyImage::load(dir);
  REQUIRE(back.regions.size() == 1);
  CHECK(back.regions[0].bytes == code);
  CHECK(back.regions[0].address == test::kva(0x100000));
  CHECK(back.module("drv")->text_size == 0x1000);
  CHECK(back.find(test::kva(0x100ffc), 4));
  CHECK(!back.find(test::kva(0x100ffc), 5));
  // Read in place (the repair agent's way): the same code, no copy of it.
  auto files = image.to_files();
  auto in_place = repair::HealthyImage::parse(files.index, files.blob, "t", repair::HealthyImage::Bytes::borrow);
  REQUIRE(in_place.regions.size() == 1);
  CHECK(in_place.regions[0].bytes.empty());
  CHECK(std::equal(code.begin(), code.end(), in_place.regions[0].code().begin(), in_place.regions[0].code().end()));
  CHECK(in_place.regions[0].code().data() == reinterpret_cast<const std::uint8_t*>(files.blob.data()));
  CHECK(in_place.find(test::kva(0x100ffc), 4));
  CHECK(!in_place.find(test::kva(0x100ffc), 5));
  // A version that is no integer (a float beyond int's range was converted to int: UB, found by fuzzing).
  CHECK_THROWS_AS(repair::HealthyImage::parse(R"({"format": "immortal-healthy-image", "version": 1e300, "regions": []})", "",
                                              "t"),
                  Error);
  { std::ofstream(dir + "/healthy.bin", std::ios::trunc) << "short"; }
  CHECK_THROWS_AS(repair::HealthyImage::load(dir), Error);
  std::filesystem::remove_all(dir);

  SECTION("packed (the repair payload's form): read in place a frame at a time; damage is refused") {
    // A region of several frames, with bytes that differ from frame to frame.
    std::vector<std::uint8_t> big(3 * repair::kPackedChunk + 100);
    for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<std::uint8_t>((i * 7) ^ (i >> 9));
    image.regions.push_back(repair::HealthyRegion::holding("big rodata", "rodata", "", test::kva(0x200000), big));
    auto packed = repair::packed_files(image);
    CHECK(packed.index.find("\"packed\"") != std::string::npos);
    auto borrowed = repair::HealthyImage::parse(packed.index, packed.blob, "t", repair::HealthyImage::Bytes::borrow);
    REQUIRE(borrowed.regions.size() == 2);
    const auto& b = borrowed.regions[1];
    CHECK(b.is_packed());
    CHECK(b.packed.size() == 4);
    CHECK(b.size() == big.size());
    CHECK(b.bytes.empty());
    CHECK(borrowed.find(test::kva(0x200000) + big.size() - 4, 4) == &b);
    repair::RegionReader reader(b);
    CHECK(std::memcmp(reader.at(0, 16), big.data(), 16) == 0);
    // Across a frame's end, and the last (shorter) frame.
    CHECK(std::memcmp(reader.at(repair::kPackedChunk - 8, 16), big.data() + repair::kPackedChunk - 8, 16) == 0);
    CHECK(std::memcmp(reader.at(big.size() - 100, 100), big.data() + big.size() - 100, 100) == 0);
    CHECK(std::memcmp(reader.at(0, big.size()), big.data(), big.size()) == 0);
    // Unpacked when copied; saved plain again.
    auto copied = repair::HealthyImage::parse(packed.index, packed.blob, "t");
    CHECK_FALSE(copied.regions[1].is_packed());
    CHECK(copied.regions[1].bytes == big);
    CHECK(copied.regions[0].bytes == code);
    auto plain = borrowed.to_files();
    CHECK(repair::HealthyImage::parse(plain.index, plain.blob, "t").regions[1].bytes == big);
    // The integrity check reads the packed copy as it reads a plain one.
    std::uint8_t bad[] = {0x0f, 0x0b};
    ram.write(0x100041, std::as_bytes(std::span(bad)));
    image.regions.pop_back();
    auto one = repair::packed_files(image);
    auto in_payload = repair::HealthyImage::parse(one.index, one.blob, "t", repair::HealthyImage::Bytes::borrow);
    auto report = repair::check_text_integrity(*kernel, in_payload, {});
    REQUIRE(report.corrupted.size() == 1);
    CHECK(report.corrupted[0].healthy == std::vector<std::uint8_t>{0x90, 0x90});

    auto refused = [&](const std::string& index, const std::string& blob) {
      try {
        (void)repair::HealthyImage::parse(index, blob, "t", repair::HealthyImage::Bytes::borrow);
      } catch (const Error& e) {
        return e.code() == ExitCode::bad_input;
      }
      return false;
    };
    auto index = nlohmann::json::parse(packed.index);
    CHECK_FALSE(refused(packed.index, packed.blob));
    auto with = [&](auto change) {
      auto j = index;
      change(j["regions"][1]);
      return j.dump();
    };
    CHECK(refused(with([](auto& r) { r["packed"].erase(r["packed"].size() - 1); }), packed.blob));  // a frame short
    CHECK(refused(with([](auto& r) { r.erase("packed"); }), packed.blob));
    CHECK(refused(with([](auto& r) { r["packed"][0][1] = 1u << 30; }), packed.blob));           // beyond the blob
    CHECK(refused(with([](auto& r) { r["packed"][1] = r["packed"][3]; }), packed.blob));       // a frame of another size
    CHECK(refused(with([](auto& r) { r["size"] = 1ull << 40; }), packed.blob));                 // unpacks to too much
    CHECK(refused(with([](auto& r) { r["packed"][0][0] = r["packed"][0][0].template get<std::uint64_t>() + 1; }), packed.blob));
    // A frame damaged inside (its header intact): found when it is read, as bad input.
    auto frame = index["regions"][1]["packed"][2];
    std::string damaged = packed.blob;
    std::uint64_t at = frame[0].get<std::uint64_t>() + frame[1].get<std::uint64_t>() / 2;
    for (int i = 0; i < 16; ++i) damaged[at + i] = static_cast<char>(damaged[at + i] ^ 0x5a);
    auto bad_frame = repair::HealthyImage::parse(packed.index, damaged, "t", repair::HealthyImage::Bytes::borrow);
    repair::RegionReader damaged_reader(bad_frame.regions[1]);
    CHECK(damaged_reader.at(0, 16)[0] == big[0]);
    try {
      (void)damaged_reader.at(2 * repair::kPackedChunk, 16);
      FAIL("a damaged frame was read");
    } catch (const Error& e) {
      CHECK(e.code() == ExitCode::bad_input);
    }
    CHECK_THROWS_AS(repair::HealthyImage::parse(packed.index, damaged, "t"), Error);  // unpacked whole when copied
  }
  SECTION("integrity: a corrupted byte is found and located; the same bytes as a known patch are not") {
    std::uint8_t bad[] = {0x0f, 0x0b};
    ram.write(0x100041, std::as_bytes(std::span(bad)));
    auto report = repair::check_text_integrity(*kernel, image, {});
    REQUIRE(report.corrupted.size() == 1);
    CHECK(report.corrupted[0].address == test::kva(0x100041));
    CHECK(report.corrupted[0].now == std::vector<std::uint8_t>{0x0f, 0x0b});
    CHECK(report.corrupted[0].healthy == std::vector<std::uint8_t>{0x90, 0x90});
    CHECK(report.corrupted[0].where.rfind("other+0x1", 0) == 0);
    CHECK(report.corruption_at(test::kva(0x100041)));
    CHECK(report.checked_bytes == 0x1000);
    auto known = repair::check_text_integrity(*kernel, image, {{test::kva(0x100040), {0xc3, 0x0f, 0x0b}}});
    CHECK(known.corrupted.empty());
    CHECK(known.expected_differences == 1);
  }
  SECTION("whole code pages: the pages a region covers entirely, unchanged ones by the precheck") {
    image.regions[0].physical = {{0, 0x100000, 0x1000}};
    auto pages = repair::whole_code_pages(image);
    REQUIRE(pages.size() == 1);
    CHECK(pages[0].physical == 0x100000);
    CHECK(pages[0].virt == image.regions[0].address);
    CHECK(pages[0].region == &image.regions[0]);
    CHECK(pages[0].offset == 0);
    CHECK_FALSE(pages[0].zeros);
    CHECK(repair::unchanged_code(pages, repair::TextPrecheck{}) == std::vector<bool>{true});
    CHECK(repair::unchanged_code(pages, repair::TextPrecheck{{pages[0].virt}}) == std::vector<bool>{false});
    std::fill(image.regions[0].bytes.begin(), image.regions[0].bytes.end(), 0);
    CHECK(repair::whole_code_pages(image)[0].zeros);
    // With digests the zeros are told by them (the same answer, without reading the copy).
    repair::digest_pieces(image);
    CHECK(repair::whole_code_pages(image)[0].zeros);
    image.regions[0].bytes[7] = 1;  // the digests still say what the copy was when they were made
    CHECK(repair::whole_code_pages(image)[0].zeros);
    repair::digest_pieces(image);
    CHECK_FALSE(repair::whole_code_pages(image)[0].zeros);
    CHECK(repair::first_pieces(image).differing == std::vector<std::uint64_t>{image.regions[0].address});
    // A run that covers no page entirely, or lies off a page boundary, gives none.
    image.regions[0].physical = {{0, 0x100000, 0x800}, {0x800, 0x100800, 0x800}};
    CHECK(repair::whole_code_pages(image).empty());
    image.regions[0].physical = {{0, 0x100800, 0x1000}};
    CHECK(repair::whole_code_pages(image).empty());
  }
  SECTION("the precheck by the pieces' digests finds what the byte comparison finds") {
    image.regions[0].physical = {{0, 0x100000, 0x1000}};
    repair::digest_pieces(image);
    REQUIRE(image.regions[0].digests.size() == 1);
    std::uint64_t first_seed = image.digest_seed;
    CHECK(repair::precheck_text(image, ram).value().differing.empty());
    std::uint8_t corrupt[] = {0x0f, 0x0b};
    ram.write(0x100041, std::as_bytes(std::span(corrupt)));
    CHECK(repair::precheck_text(image, ram).value().differing == std::vector<std::uint64_t>{test::kva(0x100000)});
    // The digests are what is compared: a copy changed after they were made still prechecks as
    // they say (they are made from the payload, which nothing changes afterwards).
    image.regions[0].bytes[0x41] = 0x0f;
    image.regions[0].bytes[0x42] = 0x0b;
    CHECK(repair::precheck_text(image, ram)->differing.size() == 1);
    // A fresh key each time (a guest cannot learn it from one copy and use it on the next).
    repair::digest_pieces(image);
    CHECK(image.digest_seed != first_seed);
    CHECK(repair::precheck_text(image, ram)->differing.empty());
    // A region whose digests do not match its pieces is compared byte for byte.
    image.regions[0].digests.push_back({});
    image.regions[0].bytes[0x41] = 0x90;
    CHECK(repair::precheck_text(image, ram)->differing.size() == 1);
  }
  SECTION("the supervisor's precheck: only differing pages are read, and the report is the same") {
    // No runs: no precheck (a copy from before they were recorded).
    CHECK_FALSE(repair::precheck_text(image, ram));
    image.regions[0].physical = {{0, 0x100000, 0x1000}};
    auto clean = repair::precheck_text(image, ram);
    REQUIRE(clean);
    CHECK(clean->differing.empty());
    std::uint8_t bad[] = {0x0f, 0x0b};
    ram.write(0x100041, std::as_bytes(std::span(bad)));
    auto found = repair::precheck_text(image, ram);
    REQUIRE(found);
    CHECK(found->differing == std::vector<std::uint64_t>{test::kva(0x100000)});
    CHECK(repair::TextPrecheck::from_json(found->to_json()).differing == found->differing);
    auto with = repair::check_text_integrity(*kernel, image, {}, &*found);
    auto without = repair::check_text_integrity(*kernel, image, {});
    CHECK(with.to_json() == without.to_json());
    REQUIRE(with.corrupted.size() == 1);
    CHECK(with.corrupted[0].address == test::kva(0x100041));
    // What the precheck found equal is not read again: a (stale) empty list means intact code.
    CHECK(repair::check_text_integrity(*kernel, image, {}, &*clean).corrupted.empty());

    // The kernel's page tables moved the code (2 MiB pages now, the first one at 0x200000):
    // the precheck compared where it was, the engine reads where it is and finds the change.
    ram.put<std::uint64_t>(0x2000 + 510 * 8, 0x3000 | 0x3);
    ram.put<std::uint64_t>(0x3000, 0x200000 | 0x83);
    ram.put<std::uint64_t>(0x3008, 0x200000 | 0x83);
    std::vector<std::uint8_t> elsewhere = code;
    elsewhere[0x80] = 0xcc;
    elsewhere[0x81] = 0xcc;
    ram.write(0x300000, std::as_bytes(std::span(elsewhere)));
    kernel->memory().forget_translations();  // as the agent does for every crash
    auto moved = repair::check_text_integrity(*kernel, image, {}, &*clean);
    REQUIRE(moved.corrupted.size() == 1);
    CHECK(moved.corrupted[0].address == test::kva(0x100080));
    CHECK(moved.checked_bytes == 0x1000);

    CHECK_THROWS_AS(repair::TextPrecheck::from_json({{"differing", {"0xffffffff80100001"}}}), Error);  // not a page

    CHECK_THROWS_AS(repair::TextPrecheck::from_json({{"differing", "all"}}), Error);
    // Runs that do not cover their region are refused when the copy is read back.
    image.regions[0].physical = {{0, 0x100000, 0x800}};
    auto short_runs = image.to_files();
    CHECK_THROWS_AS(repair::HealthyImage::parse(short_runs.index, short_runs.blob, "t"), Error);
    image.regions[0].physical = {{0, 0x100000, 0x800}, {0x800, 0x280000, 0x800}};
    auto two_runs = image.to_files();
    CHECK(repair::HealthyImage::parse(two_runs.index, two_runs.blob, "t").regions[0].physical.size() == 2);
  }
}

TEST_CASE("a module's layout from the analysis bounds its writes only when it is plausible", "[repair]") {
  json layout = {{"name", "drv"}, {"base", "0xffffffffc0100000"}, {"size", 0x3000}, {"text_size", 0x1000},
                 {"data", json::array({json::array({"0xffffffffc0101000", "0xffffffffc0103000"})})}};
  json analysis = {{"module", "drv"}, {"module_layout", layout}};
  auto ok = vmm::plausible_module_layout(analysis);
  REQUIRE(ok);
  CHECK(ok->base == 0xffffffffc0100000ull);
  CHECK(ok->text_size == 0x1000);
  CHECK(ok->in_data(0xffffffffc0102000ull, 8));
  // Round trip through the healthy copy's form.
  CHECK(repair::to_json(*ok) == layout);

  auto with = [&](const char* key, json value) {
    json a = analysis;
    a["module_layout"][key] = std::move(value);
    return vmm::plausible_module_layout(a);
  };
  CHECK_FALSE(with("name", "other"));                              // not the module it blames
  CHECK_FALSE(with("base", "0xffff888000000000"));                 // outside the module area
  CHECK_FALSE(with("base", "0xfffffffffffff000"));                 // wraps
  CHECK_FALSE(with("size", 0xffffffffull));                        // beyond the module area
  CHECK_FALSE(with("text_size", 0x4000));                          // text larger than the module
  CHECK_FALSE(with("size", "big"));                                // wrong type
  CHECK_FALSE(with("data", json::array({json::array({"0xffffffffc0101000", "0xffff888000000000"})})));
  CHECK_FALSE(vmm::plausible_module_layout({{"module", "drv"}}));  // none said
  CHECK_FALSE(vmm::plausible_module_layout({{"module", "drv"}, {"module_layout", "x"}}));
}

TEST_CASE("plan validation: a code restore may only write the healthy copy's bytes", "[repair]") {
  Validation v;
  v.healthy.regions[0].bytes[2] = 0x44;
  auto plan = v.plan_of({"restore-code", "", {{0xffffffffc0001001, {0, 0, 0}, {0x90, 0x44, 0x90}, true}}, {}, json::object(), {}});
  CHECK_NOTHROW(vmm::validate_plan(plan, v.context, *v.kernel, &v.healthy));
  auto refused = [&](const repair::RepairPlan& p) { return v.refused(p); };
  auto other_bytes = plan;
  other_bytes.actions[0].writes[0].bytes = {0xcc, 0x44, 0x90};
  CHECK(refused(other_bytes));
  auto outside = plan;
  outside.actions[0].writes[0].address = 0xffffffffc00010fe;  // runs past the region
  CHECK(refused(outside));
  auto not_code = plan;
  not_code.actions[0].writes[0].code = false;
  CHECK(refused(not_code));
  CHECK(refused([&] { auto p = plan; p.vcpu = 0; return p; }()));
  CHECK_THROWS(vmm::validate_plan(plan, v.context, *v.kernel, nullptr));
}

TEST_CASE("plan validation: khungtaskd's resume clears its flag only; a task is woken only if the plan parked it",
          "[repair]") {
  Validation v;
  auto plan = v.plan_of({"resume-detector", "", {{0xffffffff80200010, {1}, {0}, false}},
                         {{"rip", 0x10, 0xffffffff80100040}, {"rsp", 0x100, 0x108}}, json::object(), {}});
  CHECK_NOTHROW(vmm::validate_plan(plan, v.context, *v.kernel, &v.healthy));
  auto refused = [&](const repair::RepairPlan& p) { return v.refused(p); };
  CHECK(refused([&] { auto p = plan; p.actions[0].writes[0].address = 0xffffffff80200000; return p; }()));  // the taint
  CHECK(refused([&] { auto p = plan; p.actions[0].writes[0].bytes = {2}; return p; }()));
  CHECK(refused([&] { auto p = plan; p.actions[0].registers.push_back({"rdi", 0, 9}); return p; }()));
  auto wake = plan;
  wake.actions.push_back({"wake-task", "", {}, {}, json::object(), {{"wake_up_state", 0xffffffff80100080, {0xffff888000100000, 0x40}}}});
  CHECK(refused(wake));  // no kill-sleeping-task parked that task
}

TEST_CASE("plan validation: leaving a double fault's NMI level takes exactly that level off, before a kill", "[repair]") {
  Validation v;
  v.context.percpu_base = test::kva(0x300000);
  std::uint64_t preempt = v.context.percpu_base + 0x10;
  v.ram.put<std::uint32_t>(0x300010, 0x80110000);  // the #DF's NMI + hard-interrupt levels (no resched)
  auto bytes = [](std::uint32_t x) {
    return std::vector<std::uint8_t>{std::uint8_t(x), std::uint8_t(x >> 8), std::uint8_t(x >> 16), std::uint8_t(x >> 24)};
  };
  repair::RepairAction leave{"leave-nmi", "", {{preempt, bytes(0x80110000), bytes(0x80000000), false}}, {}, json::object(),
                             {{"ct_nmi_exit", 0xffffffff801000c0, {}}}};
  repair::RepairAction kill{"kill-task", "", {}, {{"rip", 0x10, 0x20}, {"rdi", 0, 9}}, json::object(), {}};
  auto plan = v.plan_of(leave);
  plan.actions.push_back(kill);
  CHECK_NOTHROW(vmm::validate_plan(plan, v.context, *v.kernel, &v.healthy));
  auto refused = [&](const repair::RepairPlan& p) { return v.refused(p); };
  CHECK(refused(v.plan_of(leave)));  // nothing killed after it
  CHECK(refused([&] { auto p = plan; p.actions[0].writes[0].bytes = bytes(0x80100000); return p; }()));  // NMI only
  CHECK(refused([&] { auto p = plan; p.actions[0].writes[0].bytes = bytes(0); return p; }()));
  CHECK(refused([&] { auto p = plan; p.actions[0].writes[0].address = 0xffffffff80200000; return p; }()));  // the taint
  CHECK(refused([&] { auto p = plan; p.actions[0].calls[0].function = "ct_irq_exit"; return p; }()));
  CHECK(refused([&] { auto p = plan; p.actions[0].calls[0].args = {1}; return p; }()));
  CHECK(refused([&] { auto p = plan; p.actions[0].registers.push_back({"rip", 0, 1}); return p; }()));
  // The count the plan expects must be the CPU's own, with one NMI level.
  v.ram.put<std::uint32_t>(0x300010, 0x80210000);
  auto nested = plan;
  nested.actions[0].writes[0] = {preempt, bytes(0x80210000), bytes(0x80100000), false};
  CHECK(refused(nested));
  v.ram.put<std::uint32_t>(0x300010, 0x80000000);
  CHECK(refused(plan));
}

TEST_CASE("plan validation: a socket's lock is given up only by release_sock(), and only while it is owned", "[repair]") {
  Validation v;
  v.context.percpu_base = test::kva(0x300000);
  const std::uint64_t sock = test::kva(0x310000);
  v.ram.put<std::int32_t>(0x310088, 1);  // sk_lock.owned
  repair::RepairAction release{"release-lock", "", {}, {}, {{"type", "socket"}, {"address", fmt::format("{:#x}", sock)}},
                               {{"release_sock", 0xffffffff80100100, {sock}}}};
  auto plan = v.plan_of(release);
  CHECK_NOTHROW(vmm::validate_plan(plan, v.context, *v.kernel, &v.healthy));
  auto refused = [&](const repair::RepairPlan& p) { return v.refused(p); };
  CHECK(refused([&] { auto p = plan; p.actions[0].calls[0] = {"mutex_unlock", 0xffffffff80100140, {sock}}; return p; }()));
  CHECK(refused([&] { auto p = plan; p.actions[0].calls[0].args = {sock + 8}; return p; }()));
  CHECK(refused([&] { auto p = plan; p.actions[0].writes.push_back({sock + 0x88, {1, 0, 0, 0}, {0, 0, 0, 0}, false}); return p; }()));
  v.ram.put<std::int32_t>(0x310088, 0);  // not owned (any more)
  CHECK(refused(plan));
}

TEST_CASE("an agent's answer is taken field by field: wrong types are refused, never thrown", "[repair]") {
  auto read = [](const json& j, vmm::RepairAnswer& out) { return vmm::read_repair_answer(j.dump(), "vm", out); };
  json plan = repair::RepairPlan{}.to_json();
  json good = {{"ok", true}, {"engine_ms", 41.5}, {"process", {{"pid", 30}, {"per_crash", true}, {"fork_ms", 15.25}, {"page_faults", 150}}},
               {"timings", {{"analysis_ms", 30.0}, {"lock_search_ms", 19.0}}},
               {"analysis", {{"cpu", 1}, {"kind", "oops"}, {"task", {{"address", "0xffff888003a1c000"}, {"pid", 121}}}}},
               {"plan", plan}};
  vmm::RepairAnswer a;
  REQUIRE(read(good, a));
  CHECK(a.ok);
  CHECK(a.mode == "vm");
  CHECK(a.engine_ms == 41.5);
  CHECK(a.process_pid == 30);
  CHECK(a.per_crash_process);
  CHECK(a.process_fork_ms == 15.25);
  CHECK(a.process_page_faults == 150);
  CHECK(a.stage_ms.at("analysis") == 30.0);
  CHECK(a.facts.cpu == 1);
  CHECK(a.facts.task_pid == 121);
  CHECK(a.to_json()["process"] == json({{"pid", 30}, {"per_crash", true}, {"fork_ms", 15.25}, {"page_faults", 150}}));
  // A count that is not one is not taken: the rest of the process still is.
  for (json bad : {json(-3), json("150"), json(1.5), json(nullptr)}) {
    json odd = good;
    odd["process"]["page_faults"] = bad;
    vmm::RepairAnswer o;
    REQUIRE(read(odd, o));
    CHECK(o.process_pid == 30);
    CHECK(o.process_page_faults == 0);
  }

  // The engine's own "no" is an answer, whatever type its reason has.
  vmm::RepairAnswer no;
  CHECK(read({{"ok", false}, {"error", 5}}, no));
  CHECK_FALSE(no.ok);
  CHECK(no.error == "the repair engine failed without saying why");

  auto refused = [&](json j) {
    vmm::RepairAnswer out;
    bool taken = read(j, out);
    INFO(j.dump());
    CHECK_FALSE(taken);
    CHECK_FALSE(out.fallbacks.empty());
    return out;
  };
  refused({{"ok", "yes"}, {"analysis", good["analysis"]}, {"plan", plan}});  // not a boolean
  refused({{"analysis", good["analysis"]}, {"plan", plan}});                 // no ok at all
  json big_cpu = good;
  big_cpu["analysis"]["cpu"] = 1e300;  // a float where an int is due (its cast would be undefined)
  refused(big_cpu);
  json wide_pid = good;
  wide_pid["analysis"]["task"]["pid"] = std::int64_t{1} << 40;
  refused(wide_pid);

  // Numbers that are not plausible times or pids are left out, not trusted.
  json odd = good;
  odd["engine_ms"] = -3;
  odd["process"] = {{"pid", 1e30}, {"fork_ms", "x"}};
  odd["timings"]["analysis_ms"] = "slow";
  vmm::RepairAnswer o;
  REQUIRE(read(odd, o));
  CHECK(o.engine_ms == 0);
  CHECK(o.process_pid == 0);
  CHECK_FALSE(o.stage_ms.contains("analysis"));
  CHECK_FALSE(o.to_json().contains("process"));
}

TEST_CASE("the repair VM's memory grows with its payload and with the page tables of the guest's RAM window", "[repair]") {
  constexpr std::uint64_t MiB = 1 << 20, GiB = 1ull << 30;
  // Debian's 6.1: a 13 MiB payload; the window's page tables are 1/512 of guest RAM, twice.
  CHECK(vmm::repair_vm_memory(13 * MiB, 512 * MiB) == 208 * MiB);
  CHECK(vmm::repair_vm_memory(13 * MiB, 16 * GiB) == 272 * MiB);
  CHECK(vmm::repair_vm_memory(13 * MiB, 64 * GiB) == 464 * MiB);
  CHECK(vmm::repair_vm_memory(0, 0) == 160 * MiB);
  // The shared VM: one VM of one guest's room, and 32 MiB for each further slot, more for larger windows.
  CHECK(vmm::shared_repair_vm_memory(13 * MiB, 512 * MiB) == (208 + 7 * 32) * MiB);
  CHECK(vmm::shared_repair_vm_memory(0, 0) == (160 + 7 * 32) * MiB);
  CHECK(vmm::shared_repair_vm_memory(13 * MiB, 64 * GiB) == (464 + 7 * (464 - 176)) * MiB);
}
