#include "campaign/campaign_progress.h"

#include "base/terminal_text.h"

#include <fmt/format.h>

#include <unistd.h>

#include <iostream>

namespace immortal::vmm {

CampaignProgress::CampaignProgress(int total, int done_before)
    : total_(total), done_(done_before), terminal_(::isatty(2) == 1) {}

std::string CampaignProgress::eta() const {
  if (done_here_ == 0 || done_ >= total_) return "ETA --:--";
  auto spent = std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
  auto left = static_cast<long>(spent / done_here_ * (total_ - done_));
  return left >= 3600 ? fmt::format("ETA {}:{:02}:{:02}", left / 3600, left / 60 % 60, left % 60)
                      : fmt::format("ETA {:02}:{:02}", left / 60, left % 60);
}

void CampaignProgress::draw() {
  if (!terminal_) return;
  constexpr int kWidth = 30;
  int filled = total_ ? done_ * kWidth / total_ : kWidth;
  std::cerr << fmt::format("\r\033[K[{}{}] {}/{} {:>3}%  {}  {}", std::string(static_cast<std::size_t>(filled), '#'),
                           std::string(static_cast<std::size_t>(kWidth - filled), '.'), done_, total_,
                           total_ ? done_ * 100 / total_ : 100, eta(), current_)
            << std::flush;
}

void CampaignProgress::starting(const std::string& phase, const std::string& fault) {
  current_ = terminal_safe(phase + " " + fault);
  draw();
}

void CampaignProgress::finished(const std::string& phase, const std::string& fault, const std::string& outcome_line) {
  ++done_, ++done_here_;
  std::string line = terminal_safe(fmt::format("[{}/{}] {} {}: {}", done_, total_, phase, fault, outcome_line));
  if (terminal_) std::cerr << "\r\033[K" << line << "\n";
  else std::cerr << line << " (" << eta() << ")\n";
  current_.clear();
  draw();
}

void CampaignProgress::note(const std::string& line) {
  if (terminal_) std::cerr << "\r\033[K";
  std::cerr << terminal_safe(line) << "\n";
  draw();
}

void CampaignProgress::end() {
  if (terminal_) std::cerr << "\r\033[K" << std::flush;
}

}  // namespace immortal::vmm
