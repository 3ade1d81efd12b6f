// immortal prepare / unprepare: a libvirt domain's definition edited through libvirt's API, the
// change shown as a diff and confirmed first (as `virsh edit` users expect to see it).
#include "base/error.h"
#include "cli/commands.h"
#include "cli/line_diff.h"
#include "libvirt/domain_preparation.h"
#include "libvirt/libvirt_connection.h"

#include <fmt/format.h>
#include <libvirt/libvirt.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdlib>

#include <unistd.h>

#include <iostream>

namespace immortal::vmm {

namespace {

// Asks on the terminal; without one (a script) the answer must come as --yes.
bool confirmed(const std::string& question, bool yes) {
  if (yes) return true;
  if (!::isatty(STDIN_FILENO))
    fail(ExitCode::usage, "not changing anything: stdin is not a terminal to ask on (add --yes to apply)");
  std::cout << question << " [y/N] " << std::flush;
  std::string answer;
  if (!std::getline(std::cin, answer)) return false;
  return answer == "y" || answer == "Y" || answer == "yes";
}

int edit_domain(const std::string& name, const std::string& uri, bool yes, bool prepare) {
  LibvirtConnection connection(uri);
  LibvirtDomain domain = connection.domain(name);
  std::string before = domain.xml(/*inactive=*/true);
  DomainEdit edit = prepare ? prepare_domain_xml(before) : unprepare_domain_xml(before);
  if (!edit.changed()) {
    std::cout << "Domain " << domain.name()
              << (prepare ? " is already prepared for immortal: nothing to change\n"
                          : " was not prepared by immortal: nothing to undo\n");
    return 0;
  }
  std::cout << fmt::format("{} domain {} ({}):\n", prepare ? "Preparing" : "Undoing the preparation of", domain.name(),
                           connection.uri());
  for (const auto& change : edit.changes) std::cout << "  - " << change << "\n";
  // The diff against the definition as libvirt reads it back in the same layout as ours.
  std::cout << "\n" << unified_diff(normalized_domain_xml(before), edit.xml, domain.name() + ".xml (now)",
                                    domain.name() + ".xml (" + (prepare ? "prepared" : "unprepared") + ")");
  if (!confirmed(prepare ? "Define the domain with these changes?" : "Define the domain without them?", yes)) {
    std::cout << "Nothing changed.\n";
    return 0;
  }
  connection.define(edit.xml);
  std::cout << fmt::format("Domain {} {}.\n", domain.name(), prepare ? "prepared" : "unprepared");
  if (domain.active())
    std::cout << fmt::format("It is running: the new definition takes effect when it next starts "
                             "(virsh shutdown {0}; virsh start {0}).\n", domain.name());
  return 0;
}

}  // namespace

// `immortal list --connect URI`: every domain of a (possibly remote) libvirt connection and its
// protection as its supervisor last told libvirt — a read-only view of another host, over
// libvirt's own protocol and authentication.
int list_libvirt_command(const std::string& uri, bool as_json) {
  constexpr long kStaleAfter = 180;  // s: supervisors refresh their account every minute
  LibvirtConnection connection(uri, /*with_events=*/false, /*read_only=*/true);
  virDomainPtr* list = nullptr;
  int n = virConnectListAllDomains(connection.raw(), &list, 0);
  if (n < 0) fail_libvirt("cannot list the domains of " + connection.uri());
  nlohmann::json all = nlohmann::json::array();
  long now = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  for (int i = 0; i < n; ++i) {
    LibvirtDomain domain(list[i], virDomainGetName(list[i]) ? virDomainGetName(list[i]) : "?");
    nlohmann::json d = {{"domain", domain.name()}};
    try {
      bool active = domain.active();
      d["running"] = active;
      d["prepared"] = domain_is_prepared(domain.xml(true));
      auto status = active ? protection_status(domain.xml(false)) : std::map<std::string, std::string>{};
      long updated = status.count("updated") ? std::atol(status["updated"].c_str()) : 0;
      std::string state = status.count("state") ? status["state"] : "";
      d["protection"] = !active || state.empty() ? "none"
                        : state == "unprotected"  ? "detached"
                        : now - updated > kStaleAfter ? "stale"
                                                      : "protected";
      if (!status.empty()) {
        nlohmann::json st = nlohmann::json::object();
        for (const auto& [k, v] : status) st[k] = v;
        st["age_s"] = now - updated;
        d["status"] = st;
      }
    } catch (const Error& e) {
      d["error"] = e.what();
    }
    all.push_back(d);
  }
  std::free(list);
  if (as_json) {
    std::cout << all.dump(2) << "\n";
    return 0;
  }
  std::cout << fmt::format(" {:<20} {:<9} {:<9} {:<11} {:>7} {:>9} {:>7}  {}\n", "Domain", "State", "Prepared",
                           "Protection", "Crashes", "Recovered", "Reboots", "Supervisor");
  std::cout << std::string(100, '-') << "\n";
  for (const auto& d : all) {
    const auto& st = d.value("status", nlohmann::json::object());
    std::string supervisor = d.value("protection", "") == "protected" || d.value("protection", "") == "stale"
                                 ? fmt::format("pid {} on {}, {} s ago", st.value("supervisor-pid", "?"), st.value("host", "?"),
                                               st.value("age_s", 0L))
                                 : "";
    std::cout << fmt::format(" {:<20} {:<9} {:<9} {:<11} {:>7} {:>9} {:>7}  {}\n", d.value("domain", "?"),
                             d.value("running", false) ? "running" : "shut off", d.value("prepared", false) ? "yes" : "no",
                             d.value("protection", "?"), st.value("crashes", "-"), st.value("recovered", "-"),
                             st.value("reboots", "-"), supervisor);
  }
  return 0;
}

int prepare_command(const std::string& domain, const std::string& uri, bool yes) {
  return edit_domain(domain, uri, yes, true);
}

int unprepare_command(const std::string& domain, const std::string& uri, bool yes) {
  return edit_domain(domain, uri, yes, false);
}

}  // namespace immortal::vmm
