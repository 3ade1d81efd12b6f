// immortal prepare / unprepare: a libvirt domain's definition edited through libvirt's API, the
// change shown as a diff and confirmed first (as `virsh edit` users expect to see it).
#include "base/error.h"
#include "cli/commands.h"
#include "cli/line_diff.h"
#include "libvirt/domain_preparation.h"
#include "libvirt/libvirt_connection.h"

#include <fmt/format.h>

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

int prepare_command(const std::string& domain, const std::string& uri, bool yes) {
  return edit_domain(domain, uri, yes, true);
}

int unprepare_command(const std::string& domain, const std::string& uri, bool yes) {
  return edit_domain(domain, uri, yes, false);
}

}  // namespace immortal::vmm
