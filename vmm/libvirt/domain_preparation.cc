#include "libvirt/domain_preparation.h"

#include "base/error.h"

#include <libxml/parser.h>
#include <libxml/tree.h>

#include <memory>

namespace immortal::vmm {

namespace {

using Doc = std::unique_ptr<xmlDoc, decltype(&xmlFreeDoc)>;
const xmlChar* x(const char* s) { return reinterpret_cast<const xmlChar*>(s); }

// Domain definitions are small; anything larger is not one (and is not parsed further).
constexpr std::size_t kMaxDomainXml = 4 << 20;

Doc parse(const std::string& xml) {
  if (xml.size() > kMaxDomainXml) fail(ExitCode::bad_input, "the domain definition is larger than 4 MiB");
  // No network, no entities from outside, no blank text nodes (the output is re-indented).
  Doc doc(xmlReadMemory(xml.data(), static_cast<int>(xml.size()), "domain.xml", nullptr,
                        XML_PARSE_NONET | XML_PARSE_NOBLANKS | XML_PARSE_NOERROR | XML_PARSE_NOWARNING),
          &xmlFreeDoc);
  if (!doc) fail(ExitCode::bad_input, "the domain definition is not well-formed XML");
  xmlNode* root = xmlDocGetRootElement(doc.get());
  if (!root || xmlStrcmp(root->name, x("domain")) != 0)
    fail(ExitCode::bad_input, "not a libvirt domain definition (its root element is not <domain>)");
  return doc;
}

std::string serialize(xmlDoc* doc) {
  xmlChar* text = nullptr;
  int size = 0;
  xmlDocDumpFormatMemory(doc, &text, &size, 1);
  std::string out(reinterpret_cast<const char*>(text), static_cast<std::size_t>(size));
  xmlFree(text);
  // libvirt's own documents carry no XML declaration; keep the diff to what changed.
  if (out.starts_with("<?xml")) out.erase(0, out.find('\n') + 1);
  return out;
}

std::string serialize(xmlNode* node) {
  std::unique_ptr<xmlBuffer, decltype(&xmlBufferFree)> buffer(xmlBufferCreate(), &xmlBufferFree);
  xmlNodeDump(buffer.get(), node->doc, node, 0, 0);
  return std::string(reinterpret_cast<const char*>(xmlBufferContent(buffer.get())),
                     static_cast<std::size_t>(xmlBufferLength(buffer.get())));
}

std::string attribute(xmlNode* node, const char* name) {
  xmlChar* value = xmlGetProp(node, x(name));
  if (!value) return "";
  std::string out(reinterpret_cast<const char*>(value));
  xmlFree(value);
  return out;
}

std::string text_of(xmlNode* node) {
  xmlChar* value = xmlNodeGetContent(node);
  if (!value) return "";
  std::string out(reinterpret_cast<const char*>(value));
  xmlFree(value);
  return out;
}

bool named(xmlNode* node, const char* name) {
  return node->type == XML_ELEMENT_NODE && xmlStrcmp(node->name, x(name)) == 0;
}

// The first child element of that name (without a namespace of its own unless ns is given).
xmlNode* child(xmlNode* parent, const char* name, const char* ns = nullptr) {
  for (xmlNode* c = parent->children; c; c = c->next) {
    if (!named(c, name)) continue;
    bool in_ns = c->ns && c->ns->href && xmlStrcmp(c->ns->href, x(ns ? ns : "")) == 0;
    if (ns ? in_ns : !c->ns) return c;
  }
  return nullptr;
}

xmlNode* child_or_new(xmlNode* parent, const char* name) {
  if (xmlNode* c = child(parent, name)) return c;
  return xmlNewChild(parent, nullptr, x(name), nullptr);
}

// An isa pvpanic device (x86 panic devices without a model are isa).
xmlNode* isa_panic(xmlNode* devices) {
  for (xmlNode* c = devices->children; c; c = c->next)
    if (named(c, "panic") && (attribute(c, "model").empty() || attribute(c, "model") == "isa")) return c;
  return nullptr;
}

xmlNode* find_agent_channel(xmlNode* devices) {
  for (xmlNode* c = devices->children; c; c = c->next) {
    if (!named(c, "channel")) continue;
    if (xmlNode* target = child(c, "target"); target && attribute(target, "name") == kAgentChannelName) return c;
  }
  return nullptr;
}

bool ram_is_shared_file(xmlNode* domain) {
  xmlNode* backing = child(domain, "memoryBacking");
  if (!backing) return false;
  xmlNode* source = child(backing, "source");
  xmlNode* access = child(backing, "access");
  return source && attribute(source, "type") == "file" && access && attribute(access, "mode") == "shared";
}

void check_domain_type(xmlNode* domain) {
  std::string type = attribute(domain, "type");
  if (type != "qemu" && type != "kvm")
    fail(ExitCode::unsupported, "the domain is of type \"{}\": immortal protects QEMU domains (type qemu or kvm)", type);
}

// <metadata><immortal:prepared xmlns:immortal="…"> in which prepare notes what it found.
xmlNode* prepared_record(xmlNode* domain) {
  xmlNode* metadata = child(domain, "metadata");
  return metadata ? child(metadata, "prepared", kMetadataNamespace) : nullptr;
}

}  // namespace

std::string normalized_domain_xml(const std::string& xml) {
  Doc doc = parse(xml);
  return serialize(doc.get());
}

bool domain_is_prepared(const std::string& xml) {
  Doc doc = parse(xml);
  xmlNode* domain = xmlDocGetRootElement(doc.get());
  xmlNode* devices = child(domain, "devices");
  xmlNode* on_crash = child(domain, "on_crash");
  return ram_is_shared_file(domain) && devices && isa_panic(devices) && find_agent_channel(devices) && on_crash &&
         text_of(on_crash) == "preserve";
}

std::string agent_channel_socket(const std::string& live_xml) {
  Doc doc = parse(live_xml);
  xmlNode* devices = child(xmlDocGetRootElement(doc.get()), "devices");
  xmlNode* channel = devices ? find_agent_channel(devices) : nullptr;
  if (!channel || attribute(channel, "type") != "unix") return "";
  xmlNode* source = child(channel, "source");
  return source ? attribute(source, "path") : "";
}

std::map<std::string, std::string> protection_status(const std::string& live_xml) {
  std::map<std::string, std::string> out;
  Doc doc = parse(live_xml);
  xmlNode* metadata = child(xmlDocGetRootElement(doc.get()), "metadata");
  xmlNode* status = metadata ? child(metadata, "status", kStatusNamespace) : nullptr;
  for (xmlAttr* a = status ? status->properties : nullptr; a; a = a->next)
    out[reinterpret_cast<const char*>(a->name)] = attribute(status, reinterpret_cast<const char*>(a->name));
  return out;
}

DomainEdit prepare_domain_xml(const std::string& xml) {
  Doc doc = parse(xml);
  xmlNode* domain = xmlDocGetRootElement(doc.get());
  check_domain_type(domain);
  DomainEdit edit;

  // What is found is noted before anything changes; a second prepare keeps the first record.
  xmlNode* record = prepared_record(domain);
  bool first = record == nullptr;
  if (first) {
    xmlNode* metadata = child_or_new(domain, "metadata");
    record = xmlNewChild(metadata, nullptr, x("prepared"), nullptr);
    xmlNs* ns = xmlNewNs(record, x(kMetadataNamespace), x("immortal"));
    xmlSetNs(record, ns);
  }
  auto note = [&](const char* what, const std::string& value) {
    if (!first) return;
    xmlNode* n = xmlNewChild(record, record->ns, x(what), nullptr);
    xmlNodeSetContent(n, x(value.c_str()));  // escaped by libxml2
  };

  if (!ram_is_shared_file(domain)) {
    xmlNode* backing = child(domain, "memoryBacking");
    note("memoryBacking", backing ? serialize(backing) : "");
    if (!backing) backing = xmlNewChild(domain, nullptr, x("memoryBacking"), nullptr);
    xmlNode* source = child_or_new(backing, "source");
    xmlSetProp(source, x("type"), x("file"));
    xmlNode* access = child_or_new(backing, "access");
    xmlSetProp(access, x("mode"), x("shared"));
    edit.changes.push_back("guest RAM in a shared file the supervisor maps (<memoryBacking> source file, access shared)");
  }
  xmlNode* devices = child_or_new(domain, "devices");
  if (!isa_panic(devices)) {
    note("added", "panic");
    xmlNode* panic = xmlNewChild(devices, nullptr, x("panic"), nullptr);
    xmlSetProp(panic, x("model"), x("isa"));
    edit.changes.push_back("a pvpanic device (<panic model='isa'/>): the guest's own crash signal, a fallback");
  }
  if (!find_agent_channel(devices)) {
    note("added", "channel");
    xmlNode* channel = xmlNewChild(devices, nullptr, x("channel"), nullptr);
    xmlSetProp(channel, x("type"), x("unix"));
    xmlNode* source = xmlNewChild(channel, nullptr, x("source"), nullptr);
    xmlSetProp(source, x("mode"), x("bind"));  // libvirt names the socket
    xmlNode* target = xmlNewChild(channel, nullptr, x("target"), nullptr);
    xmlSetProp(target, x("type"), x("virtio"));
    xmlSetProp(target, x("name"), x(kAgentChannelName));
    edit.changes.push_back(std::string("the agent's virtio-serial channel (") + kAgentChannelName + ")");
  }
  xmlNode* on_crash = child(domain, "on_crash");
  if (!on_crash || text_of(on_crash) != "preserve") {
    note("on_crash", on_crash ? text_of(on_crash) : "");
    if (!on_crash) on_crash = xmlNewChild(domain, nullptr, x("on_crash"), nullptr);
    xmlNodeSetContent(on_crash, x("preserve"));
    edit.changes.push_back("<on_crash>preserve</on_crash>: libvirt leaves a crashed guest to the supervisor "
                           "(it would destroy it by default)");
  }
  if (edit.changes.empty()) {
    // Already prepared: the definition stays byte for byte as it was.
    edit.xml = xml;
    return edit;
  }
  edit.xml = serialize(doc.get());
  return edit;
}

DomainEdit unprepare_domain_xml(const std::string& xml) {
  Doc doc = parse(xml);
  xmlNode* domain = xmlDocGetRootElement(doc.get());
  DomainEdit edit;
  xmlNode* record = prepared_record(domain);
  if (!record) {
    edit.xml = xml;
    return edit;
  }
  xmlNode* devices = child(domain, "devices");
  for (xmlNode* n = record->children; n; n = n->next) {
    if (n->type != XML_ELEMENT_NODE) continue;
    std::string value = text_of(n);
    if (named(n, "memoryBacking")) {
      xmlNode* now = child(domain, "memoryBacking");
      if (!value.empty()) {
        // Put back where it is (prepare changed it in place), or at the end if it went since.
        Doc old(xmlReadMemory(value.data(), static_cast<int>(value.size()), "memoryBacking.xml", nullptr,
                              XML_PARSE_NONET | XML_PARSE_NOBLANKS | XML_PARSE_NOERROR | XML_PARSE_NOWARNING),
                &xmlFreeDoc);
        if (!old || !xmlDocGetRootElement(old.get()))
          fail(ExitCode::bad_input, "the prepared record's memoryBacking is not XML: restore it by hand (virsh edit)");
        xmlNode* restored = xmlDocCopyNode(xmlDocGetRootElement(old.get()), doc.get(), 1);
        if (now) {
          xmlReplaceNode(now, restored);
          xmlFreeNode(now);
        } else {
          xmlAddChild(domain, restored);
        }
      } else if (now) {
        xmlUnlinkNode(now);
        xmlFreeNode(now);
      }
      edit.changes.push_back(value.empty() ? "no <memoryBacking> (as before prepare)" : "<memoryBacking> as before prepare");
    } else if (named(n, "added") && value == "panic" && devices) {
      if (xmlNode* panic = isa_panic(devices)) {
        xmlUnlinkNode(panic);
        xmlFreeNode(panic);
        edit.changes.push_back("the pvpanic device prepare added is removed");
      }
    } else if (named(n, "added") && value == "channel" && devices) {
      if (xmlNode* channel = find_agent_channel(devices)) {
        xmlUnlinkNode(channel);
        xmlFreeNode(channel);
        edit.changes.push_back("the agent's channel prepare added is removed");
      }
    } else if (named(n, "on_crash")) {
      xmlNode* now = child(domain, "on_crash");
      if (value.empty() && now) {
        xmlUnlinkNode(now);
        xmlFreeNode(now);
      } else if (!value.empty()) {
        if (!now) now = xmlNewChild(domain, nullptr, x("on_crash"), nullptr);
        xmlNodeSetContent(now, x(value.c_str()));
      }
      edit.changes.push_back("<on_crash> " + (value.empty() ? std::string("libvirt's default") : value) + " as before prepare");
    }
  }
  xmlNode* metadata = record->parent;
  xmlUnlinkNode(record);
  xmlFreeNode(record);
  if (metadata && !metadata->children) {
    xmlUnlinkNode(metadata);
    xmlFreeNode(metadata);
  }
  edit.changes.push_back("the record of what prepare changed is removed from <metadata>");
  edit.xml = serialize(doc.get());
  return edit;
}

}  // namespace immortal::vmm
