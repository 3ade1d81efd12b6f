#include "libvirt/libvirt_connection.h"

#include "base/error.h"
#include "libvirt/libvirt_events.h"

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include <cstdlib>

namespace immortal::vmm {

namespace {

// libvirt prints every error on stderr by default; ours carry its message instead.
void quiet(void*, virErrorPtr) {}

}  // namespace

void fail_libvirt(const std::string& what) {
  const char* message = virGetLastErrorMessage();
  fail(ExitCode::libvirt, "{}: {}", what, message && *message ? message : "libvirt gave no reason");
}

LibvirtConnection::LibvirtConnection(const std::string& uri, bool with_events, bool read_only)
    : uri_(uri.empty() ? kDefaultLibvirtUri : uri) {
  virSetErrorFunc(nullptr, quiet);
  if (with_events) ensure_libvirt_event_loop();
  connection_ = virConnectOpenAuth(uri_.c_str(), virConnectAuthPtrDefault, read_only ? VIR_CONNECT_RO : 0);
  if (!connection_) fail_libvirt("cannot connect to libvirt at " + uri_);
  // A dead libvirtd is noticed within 15 s even when no call is made (the close callback fires).
  if (with_events) virConnectSetKeepAlive(connection_, 5, 3);
}

LibvirtConnection::~LibvirtConnection() {
  if (connection_) virConnectClose(connection_);
}

LibvirtDomain LibvirtConnection::domain(const std::string& name_or_uuid) {
  virDomainPtr d = virDomainLookupByName(connection_, name_or_uuid.c_str());
  if (!d) d = virDomainLookupByUUIDString(connection_, name_or_uuid.c_str());
  if (!d) {
    char* end = nullptr;
    long id = std::strtol(name_or_uuid.c_str(), &end, 10);
    if (end && *end == '\0' && !name_or_uuid.empty() && id >= 0 && id < (1L << 30))
      d = virDomainLookupByID(connection_, static_cast<int>(id));
  }
  if (!d) fail(ExitCode::no_instance, "no libvirt domain \"{}\" at {}", name_or_uuid, uri_);
  const char* name = virDomainGetName(d);
  return LibvirtDomain(d, name ? name : name_or_uuid);
}

std::string LibvirtConnection::define(const std::string& xml) {
  virDomainPtr d = virDomainDefineXML(connection_, xml.c_str());
  if (!d) fail_libvirt("libvirt refused the new definition");
  LibvirtDomain domain(d, virDomainGetName(d) ? virDomainGetName(d) : "");
  return domain.name();
}

LibvirtDomain::~LibvirtDomain() {
  if (domain_) virDomainFree(domain_);
}

std::string LibvirtDomain::uuid() const {
  char text[VIR_UUID_STRING_BUFLEN] = {};
  if (virDomainGetUUIDString(domain_, text) != 0) fail_libvirt("cannot read the UUID of " + name_);
  return text;
}

LibvirtDomain::Size LibvirtDomain::size() const {
  virDomainInfo info{};
  if (virDomainGetInfo(domain_, &info) != 0) fail_libvirt("cannot read the size of " + name_);
  return {static_cast<std::uint64_t>(info.maxMem) << 10, static_cast<int>(info.nrVirtCpu)};
}

bool LibvirtDomain::active() const {
  int r = virDomainIsActive(domain_);
  if (r < 0) fail_libvirt("cannot tell whether " + name_ + " runs");
  return r == 1;
}

void LibvirtDomain::start() {
  if (virDomainCreate(domain_) != 0) fail_libvirt("cannot start " + name_);
}

void LibvirtDomain::destroy() {
  if (virDomainDestroy(domain_) != 0) fail_libvirt("cannot power off " + name_);
}

void LibvirtDomain::attach_live(const std::string& device_xml) {
  if (virDomainAttachDeviceFlags(domain_, device_xml.c_str(), VIR_DOMAIN_AFFECT_LIVE) != 0)
    fail_libvirt("cannot add a device to " + name_ + " while it runs");
}

std::string LibvirtDomain::xml(bool inactive) const {
  char* text = virDomainGetXMLDesc(domain_, inactive ? VIR_DOMAIN_XML_INACTIVE : 0);
  if (!text) fail_libvirt("cannot read the definition of " + name_);
  std::string out(text);
  std::free(text);
  return out;
}

}  // namespace immortal::vmm
