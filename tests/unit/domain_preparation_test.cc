// `immortal prepare`'s edit of a libvirt domain definition, and `unprepare` putting back exactly
// what was there; the diff shown before either.
#include "base/error.h"
#include "cli/line_diff.h"
#include "libvirt/domain_preparation.h"

#include <catch2/catch.hpp>

using namespace immortal;
using namespace immortal::vmm;

namespace {

// As `virsh dumpxml --inactive` prints a small TCG domain.
const char* kPlainDomain = R"(<domain type='qemu'>
  <name>web1</name>
  <uuid>5f0e1c2a-8a52-4c2e-9d3b-1d6f7f1e2a01</uuid>
  <memory unit='KiB'>524288</memory>
  <vcpu placement='static'>2</vcpu>
  <os>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
    <kernel>/var/lib/images/vmlinuz</kernel>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <serial type='pty'><target port='0'/></serial>
  </devices>
</domain>
)";

}  // namespace

TEST_CASE("prepare adds shared file RAM, pvpanic, the agent channel and on_crash preserve; unprepare undoes it",
          "[libvirt]") {
  CHECK_FALSE(domain_is_prepared(kPlainDomain));
  DomainEdit prepared = prepare_domain_xml(kPlainDomain);
  REQUIRE(prepared.changed());
  CHECK(prepared.changes.size() == 4);
  CHECK(domain_is_prepared(prepared.xml));
  CHECK_THAT(prepared.xml, Catch::Contains("<source type=\"file\"/>") && Catch::Contains("<access mode=\"shared\"/>") &&
                               Catch::Contains("<panic model=\"isa\"/>") &&
                               Catch::Contains("name=\"org.immortal.agent.0\"") &&
                               Catch::Contains("<on_crash>preserve</on_crash>"));
  // What was there is recorded in the domain's metadata, in a namespace of ours.
  CHECK_THAT(prepared.xml, Catch::Contains(kMetadataNamespace) && Catch::Contains("<immortal:on_crash>destroy"));

  // A second prepare changes nothing.
  DomainEdit again = prepare_domain_xml(prepared.xml);
  CHECK_FALSE(again.changed());
  CHECK(again.xml == prepared.xml);

  DomainEdit undone = unprepare_domain_xml(prepared.xml);
  REQUIRE(undone.changed());
  CHECK(undone.xml == normalized_domain_xml(kPlainDomain));
  CHECK_FALSE(unprepare_domain_xml(undone.xml).changed());
}

TEST_CASE("prepare keeps what a domain already has and unprepare restores its own memoryBacking", "[libvirt]") {
  std::string domain = R"(<domain type='kvm'><name>db</name><memory>1048576</memory>
    <memoryBacking><hugepages/><source type='memfd'/><access mode='private'/></memoryBacking>
    <devices><panic model='isa'/>
      <channel type='unix'><source mode='bind'/><target type='virtio' name='org.immortal.agent.0'/></channel>
    </devices></domain>)";
  DomainEdit prepared = prepare_domain_xml(domain);
  REQUIRE(prepared.changes.size() == 2);  // RAM and on_crash; the panic device and channel were there
  CHECK_THAT(prepared.xml, Catch::Contains("<hugepages/>"));  // left alone
  DomainEdit undone = unprepare_domain_xml(prepared.xml);
  CHECK(undone.xml == normalized_domain_xml(domain));
  CHECK_THAT(undone.xml, Catch::Contains("memfd") && Catch::Contains("private") && Catch::Contains("<panic model=\"isa\"/>"));
  CHECK_THAT(undone.xml, !Catch::Contains("on_crash"));
}

TEST_CASE("prepare refuses what is not a QEMU domain definition", "[libvirt]") {
  auto code_of = [](const std::string& xml) {
    try {
      prepare_domain_xml(xml);
    } catch (const Error& e) {
      return e.exit_code();
    }
    return 0;
  };
  CHECK(code_of("<domain type='qemu'><name>x</name>") == static_cast<int>(ExitCode::bad_input));
  CHECK(code_of("<network><name>default</name></network>") == static_cast<int>(ExitCode::bad_input));
  CHECK(code_of("<domain type='lxc'><name>c</name></domain>") == static_cast<int>(ExitCode::unsupported));
  CHECK(code_of("") == static_cast<int>(ExitCode::bad_input));
  // An external entity is never read in: it stays a reference (no entity substitution).
  DomainEdit safe = prepare_domain_xml("<!DOCTYPE domain [<!ENTITY e SYSTEM 'file:///etc/hostname'>]>"
                                       "<domain type='qemu'><name>&e;</name></domain>");
  CHECK_THAT(safe.xml, Catch::Contains("<name>&e;</name>"));
}

TEST_CASE("unified_diff shows changed lines with context, hunks merged when close", "[libvirt]") {
  CHECK(unified_diff("a\nb\n", "a\nb\n", "x", "y").empty());
  std::string d = unified_diff("1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n", "1\n2\nthree\n4\n5\n6\n7\n8\n9\n10\nelf\n", "old", "new", 1);
  CHECK(d == "--- old\n+++ new\n@@ -2,3 +2,3 @@\n 2\n-3\n+three\n 4\n@@ -10,1 +10,2 @@\n 10\n+elf\n");
  std::string close = unified_diff("a\nb\nc\nd\n", "A\nb\nc\nD\n", "o", "n", 1);
  CHECK(close == "--- o\n+++ n\n@@ -1,4 +1,4 @@\n-a\n+A\n b\n c\n-d\n+D\n");
}
