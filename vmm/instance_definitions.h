// Saved instance definitions, as libvirt keeps domain definitions: `immortal define` writes one
// (the `run` options, every path made absolute and every device checked), `immortal start NAME`
// runs it, `immortal autostart NAME` asks the host service (`immortal daemon`) to start it when
// the daemon starts — at host boot under systemd — and `immortal undefine` forgets it. One JSON
// file per instance in the definitions directory (docs/formats.md, "Instance definitions").
// Unlike the runtime directory, this one outlives a reboot.
#pragma once

#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <vector>

namespace immortal::vmm {

// --config-dir, else $IMMORTAL_CONFIG_DIR, else /etc/immortal for root, else
// $XDG_CONFIG_HOME/immortal, else ~/.config/immortal; definitions live in its instances/.
std::string config_root(const std::string& override_dir = "");

struct InstanceDefinition {
  static constexpr int kVersion = 1;
  std::string name;
  bool autostart = false;
  nlohmann::json settings;  // the `run` options (cli/run_options_json.h)
};

class DefinitionStore {
 public:
  explicit DefinitionStore(std::string config_root);

  // nullopt when there is none of that name; Error(bad_input) for a damaged or foreign file,
  // Error(unsupported) for a newer format.
  std::optional<InstanceDefinition> load(const std::string& name) const;
  // Every definition, sorted by name; damaged ones are reported through `problem` and skipped.
  std::vector<InstanceDefinition> all(std::vector<std::string>* problems = nullptr) const;
  // Atomic (tmp + fsync + rename), mode 0600, in a directory of mode 0700 owned by us.
  void save(const InstanceDefinition& definition) const;
  // false when there was none.
  bool remove(const std::string& name) const;
  const std::string& directory() const { return dir_; }

 private:
  std::string path_of(const std::string& name) const;
  std::string dir_;
};

}  // namespace immortal::vmm
