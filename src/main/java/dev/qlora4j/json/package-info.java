/**
 * Python-compatible JSON writing shared by quant (quant_state), peft.config (adapter_config.json) and
 * io.tokenizer (the chat templates' tojson). A leaf package with no dependencies, so that quant, which
 * otherwise depends only on tensor, does not have to import io or peft for it.
 */
package dev.qlora4j.json;
