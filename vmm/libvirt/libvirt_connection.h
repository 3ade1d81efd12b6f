// A connection to libvirt (libvirt's C API) and the few calls immortal makes through it: look a
// domain up, read and define its definition. Errors become Error(ExitCode::libvirt) with
// libvirt's own message. The Machine backend for libvirt domains builds on this.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

typedef struct _virConnect* virConnectPtr;
typedef struct _virDomain* virDomainPtr;

namespace immortal::vmm {

// qemu:///system, as virsh run by root uses.
inline constexpr char kDefaultLibvirtUri[] = "qemu:///system";

class LibvirtDomain;

// Throws Error(ExitCode::libvirt): what failed, with libvirt's last error message.
[[noreturn]] void fail_libvirt(const std::string& what);

class LibvirtConnection {
 public:
  // uri: empty for kDefaultLibvirtUri. Remote URIs (qemu+ssh://…) authenticate as virsh does.
  // with_events: the connection delivers domain events (libvirt_events.h runs the loop), and
  // keepalives tell when libvirtd is gone.
  // read_only: a read-only connection (virsh -r), enough for views of other hosts.
  explicit LibvirtConnection(const std::string& uri, bool with_events = false, bool read_only = false);
  ~LibvirtConnection();
  LibvirtConnection(const LibvirtConnection&) = delete;
  LibvirtConnection& operator=(const LibvirtConnection&) = delete;

  const std::string& uri() const { return uri_; }
  // By name, UUID or id, as virsh takes them.
  LibvirtDomain domain(const std::string& name_or_uuid);
  // Defines (or redefines) a domain from XML; returns its name.
  std::string define(const std::string& xml);
  virConnectPtr raw() const { return connection_; }

 private:
  std::string uri_;
  virConnectPtr connection_ = nullptr;
};

class LibvirtDomain {
 public:
  LibvirtDomain(virDomainPtr domain, std::string name) : domain_(domain), name_(std::move(name)) {}
  ~LibvirtDomain();
  LibvirtDomain(LibvirtDomain&& other) noexcept : domain_(other.domain_), name_(std::move(other.name_)) { other.domain_ = nullptr; }
  LibvirtDomain(const LibvirtDomain&) = delete;
  LibvirtDomain& operator=(const LibvirtDomain&) = delete;

  const std::string& name() const { return name_; }
  std::string uuid() const;
  struct Size {
    std::uint64_t memory_bytes = 0;
    int vcpus = 0;
  };
  Size size() const;  // as it runs, else as defined
  bool active() const;
  void start();    // virsh start
  void destroy();  // virsh destroy: powered off at once
  // virsh attach-device --live: the device is the running VM's until it powers off.
  void attach_live(const std::string& device_xml);
  virDomainPtr raw() const { return domain_; }
  // The persistent definition (what the next start uses), or the running one.
  std::string xml(bool inactive) const;

 private:
  virDomainPtr domain_;
  std::string name_;
};

}  // namespace immortal::vmm
