#include "campaign/campaign_plan.h"

#include "base/error.h"
#include "campaign/guest_files.h"
#include "fault_catalogue.h"

#include <fmt/format.h>
#include <openssl/evp.h>
#include <toml++/toml.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

namespace immortal::vmm {

const char* to_string(FaultSource source) {
  switch (source) {
    case FaultSource::driver: return "driver";
    case FaultSource::lkdtm: return "lkdtm";
    case FaultSource::fault_inject: return "fault-inject";
    case FaultSource::module: return "module";
  }
  return "?";
}

namespace {

constexpr std::size_t kMaxPlanBytes = 1 << 20;
constexpr int kMaxCount = 10'000;     // injections of one type
constexpr int kMaxInjections = 100'000;
constexpr std::size_t kMaxCommand = 4096;  // a setup or trigger command

const char* const kFaultInjectKinds[] = {"fail_function", "failslab", "fail_page_alloc"};

// Reads one table's keys, each at most once, and complains about any left unread at the end:
// a misspelt key would otherwise be silently ignored.
class TableReader {
 public:
  TableReader(const toml::table& table, std::string where, const std::string& path)
      : table_(table), where_(std::move(where)), path_(path) {}

  [[noreturn]] void bad(const toml::node* node, const std::string& what) const {
    auto line = node ? node->source().begin.line : table_.source().begin.line;
    fail(ExitCode::bad_input, "{}:{}: {}{}", path_, line, where_.empty() ? "" : where_ + ": ", what);
  }

  const toml::node* take(const std::string& key) {
    seen_.insert(key);
    return table_.get(key);
  }

  std::string string(const std::string& key, std::string fallback, std::size_t max = 256) {
    const toml::node* n = take(key);
    if (!n) return fallback;
    auto v = n->value<std::string>();
    if (!v) bad(n, fmt::format("\"{}\" must be a string", key));
    if (v->size() > max) bad(n, fmt::format("\"{}\" is longer than {} bytes", key, max));
    if (v->find('\0') != std::string::npos) bad(n, fmt::format("\"{}\" contains a NUL", key));
    return *v;
  }

  int integer(const std::string& key, int fallback, int low, int high) {
    const toml::node* n = take(key);
    if (!n) return fallback;
    auto v = n->value_exact<std::int64_t>();
    if (!v) bad(n, fmt::format("\"{}\" must be an integer", key));
    if (*v < low || *v > high) bad(n, fmt::format("\"{}\" must be between {} and {} (it is {})", key, low, high, *v));
    return static_cast<int>(*v);
  }

  // A string or an array of strings.
  std::vector<std::string> strings(const std::string& key, std::size_t max_bytes = 128) {
    const toml::node* n = take(key);
    std::vector<std::string> out;
    if (!n) return out;
    auto one = [&](const toml::node& e) {
      auto s = e.value<std::string>();
      if (!s || s->empty() || s->size() > max_bytes) bad(&e, fmt::format("\"{}\" must hold strings of 1 to {} bytes", key, max_bytes));
      out.push_back(*s);
    };
    if (n->is_string()) {
      one(*n);
      return out;
    }
    const toml::array* a = n->as_array();
    if (!a) bad(n, fmt::format("\"{}\" must be a string or an array of strings", key));
    for (const auto& e : *a) one(e);
    return out;
  }

  std::vector<int> integers(const std::string& key, std::vector<int> fallback, int low, int high) {
    const toml::node* n = take(key);
    if (!n) return fallback;
    const toml::array* a = n->as_array();
    if (!a) bad(n, fmt::format("\"{}\" must be an array of integers", key));
    std::vector<int> out;
    for (const auto& e : *a) {
      auto v = e.value_exact<std::int64_t>();
      if (!v || *v < low || *v > high) bad(&e, fmt::format("\"{}\" must hold integers from {} to {}", key, low, high));
      out.push_back(static_cast<int>(*v));
    }
    return out;
  }

  const toml::table* table(const std::string& key) {
    const toml::node* n = take(key);
    if (!n) return nullptr;
    if (!n->is_table()) bad(n, fmt::format("\"{}\" must be a table ([{}])", key, key));
    return n->as_table();
  }

  void finish() const {
    for (const auto& [key, node] : table_)
      if (!seen_.count(std::string(key.str()))) bad(&node, fmt::format("unknown key \"{}\"", key.str()));
  }

 private:
  const toml::table& table_;
  std::string where_;
  const std::string& path_;
  std::set<std::string> seen_;
};

bool valid_name(const std::string& s) {
  return !s.empty() && s.size() <= 40 &&
         std::all_of(s.begin(), s.end(), [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_'; });
}

bool valid_symbol(const std::string& s) {
  return !s.empty() && s.size() <= 128 &&
         std::all_of(s.begin(), s.end(), [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.'; });
}

FaultSpec read_fault(const toml::table& t, int number, const std::string& path) {
  TableReader r(t, fmt::format("[[faults]] #{}", number), path);
  FaultSpec f;
  const toml::node* source_node = t.get("source");
  std::string source = r.string("source", "");
  if (source == "driver") f.source = FaultSource::driver;
  else if (source == "lkdtm") f.source = FaultSource::lkdtm;
  else if (source == "fault-inject") f.source = FaultSource::fault_inject;
  else if (source == "module") f.source = FaultSource::module;
  else r.bad(source_node, fmt::format("\"source\" must be driver, lkdtm, fault-inject or module (it is \"{}\")", source));
  const toml::node* types_node = t.get("types");
  f.types = r.strings("types");
  f.count = r.integer("count", 1, 1, kMaxCount);
  if (const toml::node* n = r.take("baselines")) {
    auto v = n->value_exact<bool>();
    if (!v) r.bad(n, "\"baselines\" must be true or false");
    f.in_baselines = *v;
  }
  f.setup = r.string("setup", "", kMaxCommand);
  f.trigger = r.string("trigger", "", kMaxCommand);
  f.probe = r.string("probe", f.source == FaultSource::driver ? "cat /dev/immortal-fault >/dev/null" : "", kMaxCommand);
  switch (f.source) {
    case FaultSource::driver:
      if (f.types.empty()) r.bad(types_node, "\"types\" names the driver's classes (immortal inject --list)");
      for (const auto& c : f.types)
        if (!find_fault_class(c)) r.bad(types_node, fmt::format("unknown fault class \"{}\" (immortal inject --list)", c));
      break;
    case FaultSource::lkdtm:
      if (f.types.empty()) r.bad(types_node, "\"types\" names LKDTM's crash types, e.g. [\"BUG\", \"EXCEPTION\"]");
      for (const auto& c : f.types)
        if (!lkdtm_type(kLkdtmPrefix + c)) r.bad(types_node, fmt::format("bad LKDTM type \"{}\": 1 to 40 of A-Z, 0-9 and _", c));
      break;
    case FaultSource::fault_inject: {
      if (f.types.empty()) r.bad(types_node, "\"types\" names the kinds: fail_function, failslab, fail_page_alloc");
      for (const auto& c : f.types)
        if (std::find_if(std::begin(kFaultInjectKinds), std::end(kFaultInjectKinds), [&](const char* k) { return c == k; }) ==
            std::end(kFaultInjectKinds))
          r.bad(types_node, fmt::format("unknown fault-injection kind \"{}\": fail_function, failslab or fail_page_alloc", c));
      const toml::node* fn = t.get("functions");
      f.functions = r.strings("functions");
      for (const auto& s : f.functions)
        if (!valid_symbol(s)) r.bad(fn, fmt::format("\"{}\" is not a function name", s));
      bool wants_functions = std::count(f.types.begin(), f.types.end(), "fail_function") > 0;
      if (wants_functions && f.functions.empty()) r.bad(fn, "fail_function needs \"functions\": the functions to make fail");
      if (!wants_functions && !f.functions.empty()) r.bad(fn, "\"functions\" is for fail_function only");
      f.probability = r.integer("probability", 100, 1, 100);
      f.times = r.integer("times", 1, -1, 1'000'000);
      if (f.times == 0) r.bad(t.get("times"), "\"times\" must not be 0 (-1: no limit)");
      if (f.trigger.empty()) r.bad(nullptr, "\"trigger\" is the guest command that runs the code under the failures");
      break;
    }
    case FaultSource::module:
      if (f.types.size() != 1 || !valid_name(f.types[0]))
        r.bad(types_node, "\"types\" is the module's name, one name of letters, digits, - and _");
      if (f.trigger.empty()) r.bad(nullptr, "\"trigger\" is the guest command that makes the module crash");
      break;
  }
  const toml::node* files_node = t.get("files");
  f.files = r.strings("files", 4096);
  if (!f.files.empty() && f.source != FaultSource::module && f.source != FaultSource::fault_inject)
    r.bad(files_node, "\"files\" are for source = \"module\" or \"fault-inject\" (the driver and LKDTM are in the guest image)");
  for (const auto& file : f.files) {
    std::string name = std::filesystem::path(file).filename().string();
    if (!valid_guest_file_name(name))
      r.bad(files_node, fmt::format("\"{}\": a file's name in the guest is 1 to 100 letters, digits, '.', '-' or '_', not starting with '.'", file));
  }
  if (f.source != FaultSource::fault_inject) {
    r.take("functions"), r.take("probability"), r.take("times");
    if (t.get("functions") || t.get("probability") || t.get("times"))
      r.bad(nullptr, "\"functions\", \"probability\" and \"times\" are for source = \"fault-inject\"");
  }
  if ((f.source == FaultSource::driver || f.source == FaultSource::lkdtm) && !f.trigger.empty())
    r.bad(t.get("trigger"), "the driver's and LKDTM's faults are injected by immortal: no \"trigger\"");
  r.finish();
  return f;
}

std::string sha256_hex(const std::string& text) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  EVP_Digest(text.data(), text.size(), digest, &size, EVP_sha256(), nullptr);
  std::string out;
  for (unsigned i = 0; i < size; ++i) out += fmt::format("{:02x}", digest[i]);
  return out;
}

}  // namespace

CampaignPlan parse_campaign_plan(const std::string& text, const std::string& path) {
  if (text.size() > kMaxPlanBytes) fail(ExitCode::bad_input, "{}: a plan is at most {} bytes", path, kMaxPlanBytes);
  toml::table root;
  try {
    root = toml::parse(text, path);
  } catch (const toml::parse_error& e) {
    fail(ExitCode::bad_input, "{}:{}:{}: {}", path, e.source().begin.line, e.source().begin.column, e.description());
  }
  CampaignPlan plan;
  plan.path = path;
  plan.digest = sha256_hex(text);
  TableReader top(root, "", path);
  const toml::node* name_node = root.get("name");
  plan.name = top.string("name", "");
  if (!valid_name(plan.name)) top.bad(name_node, "\"name\" is 1 to 40 letters, digits, - or _ (it names the guests and files)");
  if (const toml::table* g = top.table("guest")) {
    TableReader r(*g, "[guest]", path);
    plan.kernel = r.string("kernel", "", 4096);
    plan.initrd = r.string("initrd", "", 4096);
    const toml::node* disk = g->get("disk");
    plan.disk = r.string("disk", "", 4096);
    if (!plan.disk.empty() && (!plan.kernel.empty() || !plan.initrd.empty()))
      r.bad(disk, "\"disk\" boots by the firmware: no \"kernel\" or \"initrd\" with it");
    const toml::node* domain = g->get("libvirt");
    plan.libvirt_domain = r.string("libvirt", "", 256);
    plan.libvirt_uri = r.string("connect", "", 1024);
    if (!plan.libvirt_uri.empty() && plan.libvirt_domain.empty())
      r.bad(g->get("connect"), "\"connect\" is the libvirt URI of the domain named by \"libvirt\"");
    if (!plan.libvirt_domain.empty())
      for (const char* key : {"kernel", "initrd", "disk", "memory", "vcpus"})
        if (g->get(key)) r.bad(domain, fmt::format("\"libvirt\" runs the domain as libvirt defines it: no \"{}\" with it", key));
    plan.memory = r.string("memory", plan.memory, 16);
    plan.vcpus = r.integer("vcpus", plan.vcpus, 1, 64);
    r.finish();
  }
  if (const toml::table* rec = top.table("recovery")) {
    TableReader r(*rec, "[recovery]", path);
    const toml::node* repair = rec->get("repair");
    plan.repair = r.string("repair", plan.repair);
    if (plan.repair != "vm" && plan.repair != "inline") r.bad(repair, "\"repair\" is vm or inline");
    const toml::node* q = rec->get("quarantine");
    plan.quarantine = r.string("quarantine", plan.quarantine);
    if (plan.quarantine != "function" && plan.quarantine != "driver") r.bad(q, "\"quarantine\" is function or driver");
    plan.verify_window_s = r.integer("verify_window", plan.verify_window_s, 1, 600);
    plan.outcome_timeout_s = r.integer("outcome_timeout", plan.outcome_timeout_s, 30, 3600);
    plan.bundle_keep = r.integer("bundle_keep", plan.bundle_keep, 0, 100'000);
    r.finish();
  }
  if (const toml::table* w = top.table("workload")) {
    TableReader r(*w, "[workload]", path);
    plan.record_interval_ms = r.integer("interval_ms", plan.record_interval_ms, 0, 60'000);
    r.finish();
  }
  if (const toml::table* b = top.table("baselines")) {
    TableReader r(*b, "[baselines]", path);
    plan.baselines.panic_on_oops = r.integers("panic_on_oops", plan.baselines.panic_on_oops, 0, 1);
    std::set<int> unique(plan.baselines.panic_on_oops.begin(), plan.baselines.panic_on_oops.end());
    if (unique.size() != plan.baselines.panic_on_oops.size()) r.bad(b->get("panic_on_oops"), "each panic_on_oops value once");
    plan.baselines.per_type = r.integer("per_type", plan.baselines.per_type, 1, kMaxCount);
    r.finish();
  }
  const toml::node* faults = top.take("faults");
  const toml::array* list = faults ? faults->as_array() : nullptr;
  if (!list || list->empty()) top.bad(faults, "no [[faults]]: a campaign needs at least one fault source");
  int number = 0;
  for (const auto& node : *list) {
    ++number;
    if (!node.is_table()) top.bad(&node, "each [[faults]] entry must be a table");
    plan.faults.push_back(read_fault(*node.as_table(), number, path));
  }
  top.finish();
  // Every file lands in one guest directory under its own name: two different files of one name
  // would overwrite each other.
  std::map<std::string, std::string> by_name;
  for (const auto& f : plan.faults)
    for (const auto& file : f.files) {
      auto [it, added] = by_name.emplace(std::filesystem::path(file).filename().string(), file);
      if (!added && it->second != file)
        fail(ExitCode::bad_input, "{}: \"{}\" and \"{}\" would both be {}/{} in the guest", path, it->second, file, kGuestFilesDir, it->first);
    }
  std::size_t total = 0;
  for (const auto& f : plan.faults)
    total += static_cast<std::size_t>(f.count) * std::max<std::size_t>(1, f.types.size()) * std::max<std::size_t>(1, f.functions.size());
  if (total > kMaxInjections) fail(ExitCode::bad_input, "{}: {} injections; a campaign has at most {}", path, total, kMaxInjections);
  return plan;
}

CampaignPlan read_campaign_plan(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(ExitCode::bad_input, "cannot read the campaign plan \"{}\"", path);
  std::string text;
  text.resize(kMaxPlanBytes + 1);
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<std::size_t>(in.gcount()));
  CampaignPlan plan = parse_campaign_plan(text, path);
  // The files the guest will get: there and readable now, not at the first boot.
  for (const auto& f : plan.faults)
    for (const auto& file : f.files) {
      try {
        guest_file_size(file);
      } catch (const Error& e) {
        fail(ExitCode::bad_input, "{}: files: {}", path, e.what());
      }
    }
  return plan;
}

std::vector<Injection> expand_injections(const CampaignPlan& plan, int per_type) {
  // The types of every table, each with its count.
  struct Kind {
    int spec;
    FaultSource source;
    std::string type, fault;
    int count;
  };
  std::vector<Kind> kinds;
  int rounds = 0;
  for (std::size_t s = 0; s < plan.faults.size(); ++s) {
    const FaultSpec& f = plan.faults[s];
    if (per_type > 0 && !f.in_baselines) continue;
    int count = per_type > 0 ? std::min(f.count, per_type) : f.count;
    rounds = std::max(rounds, count);
    for (const auto& t : f.types) {
      auto add = [&](const std::string& fault) { kinds.push_back({static_cast<int>(s), f.source, t, fault, count}); };
      switch (f.source) {
        case FaultSource::driver: add(t); break;
        case FaultSource::lkdtm: add(kLkdtmPrefix + t); break;
        case FaultSource::module: add("module:" + t); break;
        case FaultSource::fault_inject:
          if (t == "fail_function")
            for (const auto& fn : f.functions) add("fail_function:" + fn);
          else
            add(t);
          break;
      }
    }
  }
  std::vector<Injection> out;
  for (int round = 0; round < rounds; ++round)
    for (const auto& k : kinds)
      if (round < k.count) out.push_back({static_cast<int>(out.size()), k.source, k.type, k.fault, k.spec});
  return out;
}

}  // namespace immortal::vmm
