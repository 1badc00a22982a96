#pragma once
// A console reporter that also keeps each benchmark's bytes/s (the median when repetitions are
// aggregated, else the single run) by benchmark name, so a bench binary can print ratios between
// its own benchmarks at the end: derive, override Finalize(), read rate_.
#include <benchmark/benchmark.h>

#include <map>
#include <string>
#include <vector>

class rate_reporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& r : runs) {
      if (r.run_type == Run::RT_Aggregate && r.aggregate_name != "median") continue;
      const auto it = r.counters.find("bytes_per_second");
      if (it != r.counters.end()) rate_[r.run_name.function_name] = it->second.value;
    }
    ConsoleReporter::ReportRuns(runs);
  }

 protected:
  std::map<std::string, double> rate_;  ///< bytes per second, by benchmark name
};
