// A campaign's progress on stderr: on a terminal one line redrawn in place (a bar, the count,
// the injection running, the estimated time left); otherwise (a log, CI) one plain line per
// injection as it ends.
#pragma once

#include <chrono>
#include <string>

namespace immortal::vmm {

class CampaignProgress {
 public:
  CampaignProgress(int total, int done_before);
  void starting(const std::string& phase, const std::string& fault);
  void finished(const std::string& phase, const std::string& fault, const std::string& outcome_line);
  void note(const std::string& line);  // a message between injections
  void end();

 private:
  void draw();
  std::string eta() const;

  int total_, done_;
  int done_here_ = 0;
  bool terminal_;
  std::string current_;
  std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
};

}  // namespace immortal::vmm
