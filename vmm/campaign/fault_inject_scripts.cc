#include "campaign/fault_inject_scripts.h"

#include "campaign/campaign_plan.h"

#include <fmt/format.h>

namespace immortal::vmm {

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

std::string fault_inject_script(const FaultSpec& f, const Injection& inj, const FaultInjectPaths& paths) {
  std::string kind = inj.type, dir = paths.debugfs + "/" + kind;
  std::string s = fmt::format("d={}; [ -d \"$d\" ] || {{ echo 'no {} in this kernel (CONFIG_FAULT_INJECTION)'; exit 3; }}; ",
                              shell_quote(dir), kind);
  if (kind == "fail_function") {
    std::string fn = inj.fault.substr(inj.fault.find(':') + 1);
    s += fmt::format("echo > \"$d/inject\"; echo {0} > \"$d/inject\" || {{ echo 'fail_function cannot inject {1}'; exit 4; }}; ",
                     shell_quote(fn), fn);
  }
  s += fmt::format("echo {} > \"$d/probability\" && echo {} > \"$d/times\" && echo 0 > \"$d/interval\" && "
                   "echo 1 > \"$d/task-filter\" && echo 0 > \"$d/space\" 2>/dev/null; echo 1 > \"$d/verbose\"; ",
                   f.probability, f.times);
  // The kernel's defaults spare what most code allocates: sleeping allocations (GFP_KERNEL) and,
  // for pages, order 0 and highmem. Like the kernel's own tools/testing/fault-injection/failcmd.sh,
  // let them fail too, or a driver's allocations would never be reached.
  if (kind == "failslab" || kind == "fail_page_alloc") s += "echo N > \"$d/ignore-gfp-wait\"; ";
  if (kind == "fail_page_alloc") s += "echo N > \"$d/ignore-gfp-highmem\"; echo 0 > \"$d/min-order\"; ";
  // The trigger runs in the marked shell itself (eval, not exec): an exec would be the first
  // thing to fail. The mark is inherited: the trigger's children fail too, nothing else does.
  s += fmt::format("setsid sh -c 'echo 1 > \"$1/make-it-fail\"; eval \"$0\"' {} {} </dev/null >/dev/null 2>&1 &",
                   shell_quote(f.trigger), shell_quote(paths.proc_self));
  return s;
}

std::string fault_inject_cleanup(const Injection& inj, const FaultInjectPaths& paths) {
  std::string d = shell_quote(paths.debugfs + "/" + inj.type);
  return fmt::format("[ -d {0} ] && {{ echo 0 > {0}/probability; {1} true; }}", d,
                     inj.type == "fail_function" ? "echo > " + d + "/inject;" : "");
}

}  // namespace immortal::vmm
