// The kernel readers' results as JSON, and as the text tables a person reads. Shared by the
// offline report (`immortal diag`) and the supervisor's live views (`immortal ps|lsmod|dmesg`).
#pragma once

#include "kernel/kernel.h"

#include <nlohmann/json.hpp>

#include <string>

namespace immortal {

struct TaskInfo;

nlohmann::json task_json(const TaskInfo& task);
// {"tasks": [...], "complete": bool, "problem"?: text}
nlohmann::json tasks_json(const Kernel& kernel);
// {"modules": [...], "complete": bool, "problem"?: text}
nlohmann::json modules_json(const Kernel& kernel);
// {"records": [{seq, ts_nsec, level, text}], "skipped": N, "panic_message": text}
nlohmann::json kernel_log_json(const Kernel& kernel);

std::string render_tasks(const nlohmann::json& tasks);
std::string render_modules(const nlohmann::json& modules);
std::string render_kernel_log(const nlohmann::json& records);

}  // namespace immortal
