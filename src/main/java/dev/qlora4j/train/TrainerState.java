package dev.qlora4j.train;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * Where a run stands: transformers' TrainerState (global_step, epoch, log_history ... written as
 * trainer_state.json in its shape) plus what qlora4j needs to resume bit-identically (written to
 * {@link Checkpoints#TRAINER_FILE}): the data position (epoch index and micro-batches done in it),
 * the loss accumulated since the last log, the steps last logged / evaluated / saved, and the
 * seeds. Random state itself needs no saving: see {@link DataOrder}.
 */
final class TrainerState {
    static final String FORMAT = "qlora4j-trainer";

    long globalStep;
    double epoch;
    long maxSteps;
    int numTrainEpochs;
    long loggingSteps;
    long evalSteps;
    long saveSteps;
    int trainBatchSize;
    final List<Map<String, Object>> logHistory = new ArrayList<>();

    // resume extras
    int epochIndex;
    int microBatchesDone;
    double lossSinceLog;      // sum of per-step mean losses since the last train log
    double totalLoss;         // sum of per-step mean losses of the whole run
    long lastLoggedStep;
    long lastEvalStep;
    long lastSavedStep;
    double lastGradNorm = Double.NaN; // of the latest step: an epoch-end log after a resume reports it
    double lastLr = Double.NaN;
    long inputTokensSeen;
    long trainedTokensSeen;
    long seed;
    long dataSeed;
    int rows;
    long dataFingerprint;

    /** trainer_state.json as transformers writes it (keys sorted on write). */
    Map<String, Object> transformersJson() {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("best_global_step", null);
        m.put("best_metric", null);
        m.put("best_model_checkpoint", null);
        m.put("epoch", epoch);
        m.put("eval_steps", evalSteps);
        m.put("global_step", globalStep);
        m.put("is_hyper_param_search", false);
        m.put("is_local_process_zero", true);
        m.put("is_world_process_zero", true);
        m.put("log_history", logHistory);
        m.put("logging_steps", loggingSteps);
        m.put("max_steps", maxSteps);
        m.put("num_input_tokens_seen", inputTokensSeen);
        m.put("num_train_epochs", numTrainEpochs);
        m.put("save_steps", saveSteps);
        Map<String, Object> control = new LinkedHashMap<>();
        control.put("should_epoch_stop", false);
        control.put("should_evaluate", false);
        control.put("should_log", false);
        control.put("should_save", true);
        control.put("should_training_stop", globalStep >= maxSteps);
        m.put("stateful_callbacks", Map.of("TrainerControl", Map.of("args", control, "attributes", Map.of())));
        m.put("total_flos", 0.0);
        m.put("train_batch_size", trainBatchSize);
        m.put("trial_name", null);
        m.put("trial_params", null);
        return m;
    }

    /** The resume file's content. */
    Map<String, Object> resumeJson() {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("format", FORMAT);
        m.put("version", 1);
        m.put("global_step", globalStep);
        m.put("epoch", epoch);
        m.put("epoch_index", epochIndex);
        m.put("micro_batches_done", microBatchesDone);
        m.put("loss_since_log", lossSinceLog);
        m.put("total_loss", totalLoss);
        m.put("last_logged_step", lastLoggedStep);
        m.put("last_eval_step", lastEvalStep);
        m.put("last_saved_step", lastSavedStep);
        m.put("last_grad_norm", Double.isFinite(lastGradNorm) ? lastGradNorm : null);
        m.put("last_learning_rate", Double.isFinite(lastLr) ? lastLr : null);
        m.put("input_tokens_seen", inputTokensSeen);
        m.put("trained_tokens_seen", trainedTokensSeen);
        m.put("seed", seed);
        m.put("data_seed", dataSeed);
        m.put("rows", rows);
        m.put("data_fingerprint", Long.toHexString(dataFingerprint));
        return m;
    }

    /** Restores the position and history from a checkpoint folder into this (fresh) state. */
    @SuppressWarnings("unchecked")
    void restore(Path checkpoint) {
        Path file = checkpoint.resolve(Checkpoints.TRAINER_FILE);
        Map<String, Object> r = TrainJson.read(file);
        if (!FORMAT.equals(r.get("format"))) {
            throw new IllegalArgumentException(file + " is not a qlora4j trainer state (format " + r.get("format") + ")");
        }
        globalStep = TrainJson.asLong(r, "global_step", file);
        epoch = TrainJson.asDouble(r, "epoch", file);
        epochIndex = (int) TrainJson.asLong(r, "epoch_index", file);
        microBatchesDone = (int) TrainJson.asLong(r, "micro_batches_done", file);
        lossSinceLog = TrainJson.asDouble(r, "loss_since_log", file);
        totalLoss = TrainJson.asDouble(r, "total_loss", file);
        lastLoggedStep = TrainJson.asLong(r, "last_logged_step", file);
        lastEvalStep = TrainJson.asLong(r, "last_eval_step", file);
        lastSavedStep = TrainJson.asLong(r, "last_saved_step", file);
        lastGradNorm = r.get("last_grad_norm") instanceof Number n ? n.doubleValue() : Double.NaN;
        lastLr = r.get("last_learning_rate") instanceof Number n ? n.doubleValue() : Double.NaN;
        inputTokensSeen = TrainJson.asLong(r, "input_tokens_seen", file);
        trainedTokensSeen = TrainJson.asLong(r, "trained_tokens_seen", file);
        Path stateFile = checkpoint.resolve("trainer_state.json");
        Map<String, Object> t = TrainJson.read(stateFile);
        if (!(t.get("log_history") instanceof List<?> history)) {
            throw new IllegalArgumentException(stateFile + " has no log_history list; the checkpoint is damaged");
        }
        logHistory.clear();
        for (Object o : history) logHistory.add(new LinkedHashMap<>((Map<String, Object>) o));
    }

    /** Seeds and data identity recorded in a checkpoint, compared on resume. */
    static Map<String, Object> recorded(Path checkpoint) {
        return TrainJson.read(checkpoint.resolve(Checkpoints.TRAINER_FILE));
    }
}
