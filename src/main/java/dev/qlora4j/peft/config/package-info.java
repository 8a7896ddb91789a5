/**
 * Adapter configurations as peft stores them in adapter_config.json (LoRA, prefix tuning,
 * prompt tuning, and our BOTTLENECK type modelled on AdapterHub's BnConfig), read with
 * {@link dev.qlora4j.peft.config.PeftConfigs#load} and written byte-for-byte as peft writes
 * them, plus peft's rules for which modules get LoRA ({@link dev.qlora4j.peft.config.TargetModules})
 * and per-module rank, alpha and scaling ({@link dev.qlora4j.peft.config.LoraConfig#scaling}).
 */
package dev.qlora4j.peft.config;
