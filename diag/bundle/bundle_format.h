// A diagnosis bundle: one directory per crash (or per `immortal bundle`), optionally packed as
// NAME.tar.zst. docs/bundle-format.md is the reference; this names its parts.
#pragma once

namespace immortal::bundle {

constexpr const char* kFormatName = "immortal-bundle";
constexpr int kFormatVersion = 1;  // readers refuse a newer version with a clear message

constexpr const char* kManifest = "manifest.json";  // written last: its presence marks completion
constexpr const char* kVmcore = "vmcore";
constexpr const char* kReportJson = "report.json";
constexpr const char* kReportText = "report.txt";
constexpr const char* kDmesg = "dmesg.txt";
constexpr const char* kEvents = "events.jsonl";
constexpr const char* kProfileDir = "profile";
// A bundle being written is PARENT/.NAME.partial until it is complete and renamed.
constexpr const char* kPartialPrefix = ".";
constexpr const char* kPartialSuffix = ".partial";
constexpr const char* kArchiveSuffix = ".tar.zst";

}  // namespace immortal::bundle
