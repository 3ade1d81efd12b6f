// `immortal define | start | autostart | undefine`: saved instance definitions, as virsh has
// define, start, autostart and undefine for domains (instance_definitions.h).
#include "base/error.h"
#include "cli/commands.h"
#include "cli/run_options_json.h"
#include "instance.h"
#include "instance_definitions.h"

#include <iostream>

namespace immortal::vmm {

namespace {

InstanceDefinition load_or_fail(const DefinitionStore& store, const std::string& name) {
  auto d = store.load(name);
  if (!d) fail(ExitCode::no_instance, "no instance named \"{}\" is defined (in {}): immortal define -n {} …", name,
               store.directory(), name);
  return *d;
}

}  // namespace

int define_command(const GlobalOptions& global, const RunOptions& given) {
  RunOptions o = checked_run_options(given);  // a definition that cannot start is refused now
  o.detach = false;
  o.console = false;
  DefinitionStore store(config_root(global.config_dir));
  auto old = store.load(o.name);
  InstanceDefinition d{o.name, old && old->autostart, nlohmann::json(o)};
  store.save(d);
  std::cout << "Instance " << o.name << (old ? " redefined" : " defined") << " (" << store.directory() << "/" << o.name
            << ".json)\n";
  if (instance_running(runtime_root(global.runtime_dir), o.name))
    std::cout << "The running instance keeps its settings until it is started again.\n";
  return 0;
}

int start_command(const GlobalOptions& global, const std::string& name, bool foreground, bool console) {
  DefinitionStore store(config_root(global.config_dir));
  InstanceDefinition d = load_or_fail(store, name);
  RunOptions o;
  try {
    o = d.settings.get<RunOptions>();
  } catch (const std::exception& e) {
    fail(ExitCode::bad_input, "the definition of \"{}\" is damaged: {}", name, e.what());
  }
  o.name = name;
  o.detach = !foreground;
  o.console = foreground && console;
  if (instance_running(runtime_root(global.runtime_dir), name))
    fail(ExitCode::failure, "instance \"{}\" is already running", name);
  return run_command(global, o);
}

int autostart_command(const GlobalOptions& global, const std::string& name, bool enable) {
  DefinitionStore store(config_root(global.config_dir));
  InstanceDefinition d = load_or_fail(store, name);
  d.autostart = enable;
  store.save(d);
  std::cout << "Instance " << name << (enable ? " marked as autostarted" : " unmarked as autostarted")
            << (enable ? " (by immortal daemon when it starts)" : "") << "\n";
  return 0;
}

int undefine_command(const GlobalOptions& global, const std::string& name) {
  DefinitionStore store(config_root(global.config_dir));
  if (!store.remove(name)) fail(ExitCode::no_instance, "no instance named \"{}\" is defined (in {})", name, store.directory());
  std::cout << "Instance " << name << " has been undefined\n";
  if (instance_running(runtime_root(global.runtime_dir), name)) std::cout << "It runs on until it is stopped.\n";
  return 0;
}

}  // namespace immortal::vmm
