// bench_filter.cuh — which variants a bench runs: bench_selected(name, env) is true when the environment variable env
// is unset or empty, or when one of its comma-separated items is a substring of name (QL_DQ_ONLY="pair,bnb").
#pragma once
#include <cstdlib>
#include <string>

static bool bench_selected(const std::string& name, const char* env) {
    const char* only = getenv(env);
    if (!only || !*only) return true;
    std::string list(only);
    size_t p = 0;
    while (p <= list.size()) {
        size_t e = list.find(',', p);
        if (e == std::string::npos) e = list.size();
        std::string item = list.substr(p, e - p);
        if (!item.empty() && name.find(item) != std::string::npos) return true;
        p = e + 1;
    }
    return false;
}
