package dev.qlora4j.io;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.*;

class CheckpointTest {
    @TempDir Path dir;

    /** Five F32 tensors of 4, 4, 12, 4, 4 floats (16, 16, 48, 16, 16 bytes), in layer order. */
    private static Map<String, Tensor> model() {
        Map<String, Tensor> m = new LinkedHashMap<>();
        int[] sizes = {4, 4, 12, 4, 4};
        for (int i = 0; i < sizes.length; i++) {
            float[] v = new float[sizes[i]];
            for (int j = 0; j < v.length; j++) v[j] = i * 100 + j + 0.5f;
            m.put("layers." + i + ".weight", Tensor.of(v, sizes[i]));
        }
        return m;
    }

    private List<String> listDir() throws Exception {
        try (var s = Files.list(dir)) {
            return s.map(p -> p.getFileName().toString()).sorted().toList();
        }
    }

    private static void assertSameTensors(Map<String, Tensor> expected, CheckpointReader r) {
        assertEquals(expected.keySet(), r.names());
        for (var e : expected.entrySet()) {
            assertTrue(r.has(e.getKey()));
            assertArrayEquals(e.getValue().toFloatArray(), r.tensor(e.getKey()).toFloatArray(), e.getKey());
            assertArrayEquals(e.getValue().shape(), r.info(e.getKey()).shape());
            assertEquals(DType.F32, r.info(e.getKey()).dtype());
        }
    }

    @Test
    void shardedWriteAndRead() throws Exception {
        Map<String, Tensor> m = model();
        // 32-byte shards: [0,1] | [2] (48 bytes, alone: larger than a shard) | [3,4]
        CheckpointWriter.writeSharded(dir, m, 32, Map.of("format", "pt"));
        assertEquals(List.of("model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                "model-00003-of-00003.safetensors", "model.safetensors.index.json"), listDir());

        JsonNode index = new ObjectMapper().readTree(dir.resolve("model.safetensors.index.json").toFile());
        assertEquals(112, index.get("metadata").get("total_size").asLong());
        JsonNode wm = index.get("weight_map");
        assertEquals("model-00001-of-00003.safetensors", wm.get("layers.0.weight").asText());
        assertEquals("model-00001-of-00003.safetensors", wm.get("layers.1.weight").asText());
        assertEquals("model-00002-of-00003.safetensors", wm.get("layers.2.weight").asText());
        assertEquals("model-00003-of-00003.safetensors", wm.get("layers.3.weight").asText());
        assertEquals("model-00003-of-00003.safetensors", wm.get("layers.4.weight").asText());

        try (CheckpointReader r = CheckpointReader.open(dir)) {
            assertSameTensors(m, r);
            assertEquals(3, r.files().size());
            assertEquals("112", r.metadata().get("total_size"));
            assertEquals(Map.of("format", "pt"), r.files().getFirst().metadata());
            assertEquals(dir.resolve("model.safetensors.index.json"), r.path());
        }
    }

    @Test
    void fitsInOneShardGivesModelSafetensors() throws Exception {
        Map<String, Tensor> m = model();
        CheckpointWriter.writeSharded(dir, m, 1L << 30, Map.of("format", "pt"));
        assertEquals(List.of("model.safetensors"), listDir());
        try (CheckpointReader r = CheckpointReader.open(dir)) {
            assertSameTensors(m, r);
            assertEquals(Map.of("format", "pt"), r.metadata());
            assertEquals(1, r.files().size());
        }
    }

    @Test
    void resavingWithAnotherLayoutRemovesStaleFiles() throws Exception {
        Map<String, Tensor> m = model();
        CheckpointWriter.writeSharded(dir, m, 32, null);
        CheckpointWriter.writeSharded(dir, m, 1L << 30, null);
        assertEquals(List.of("model.safetensors"), listDir(), "old index and shards removed");
        CheckpointWriter.writeSharded(dir, m, 64, null);   // 64-byte shards: [0,1] | [2,3] | [4]
        assertEquals(List.of("model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                "model-00003-of-00003.safetensors", "model.safetensors.index.json"), listDir(),
                "single file removed after sharding");
        try (CheckpointReader r = CheckpointReader.open(dir)) {
            assertSameTensors(m, r);
        }
        Files.writeString(dir.resolve("config.json"), "{}");
        CheckpointWriter.writeSharded(dir, m, 1L << 30, null);
        assertEquals(List.of("config.json", "model.safetensors"), listDir(), "unrelated files kept");
        assertThrows(IllegalArgumentException.class, () -> CheckpointWriter.writeSharded(dir, m, 0, null));
    }

    @Test
    void readerDelegateWritesTheSameLayout() throws Exception {
        CheckpointReader.writeSharded(dir, model(), 32, null);
        assertEquals(4, listDir().size());
    }

    @Test
    void explicitFileAndOnlySafetensorsInDir() throws Exception {
        Map<String, Tensor> m = Map.of("base_model.model.q.lora_A.weight", Tensor.of(new float[]{1, 2}, 1, 2));
        Path adapter = dir.resolve("adapter_model.safetensors");
        SafetensorsWriter.write(adapter, m, null);
        try (CheckpointReader r = CheckpointReader.open(adapter)) {
            assertSameTensors(m, r);
            assertEquals(adapter, r.path());
        }
        try (CheckpointReader r = CheckpointReader.open(dir)) {   // the only *.safetensors
            assertSameTensors(m, r);
        }
    }

    @Test
    void severalFilesWithoutIndexIsAmbiguous() throws Exception {
        SafetensorsWriter.write(dir.resolve("a.safetensors"), Map.of(), null);
        SafetensorsWriter.write(dir.resolve("b.safetensors"), Map.of(), null);
        ModelFormatException e = assertThrows(ModelFormatException.class, () -> CheckpointReader.open(dir));
        assertTrue(e.getMessage().startsWith(dir.toString()) && e.getMessage().contains("[a.safetensors, b.safetensors]")
                && e.getMessage().contains("pass the file"), e.getMessage());
    }

    @Test
    void emptyDirectoryAndMissingPath() throws Exception {
        ModelFormatException e = assertThrows(ModelFormatException.class, () -> CheckpointReader.open(dir));
        assertTrue(e.getMessage().startsWith(dir.toString()) && e.getMessage().contains("no model.safetensors.index.json"), e.getMessage());
        UncheckedIOException u = assertThrows(UncheckedIOException.class, () -> CheckpointReader.open(dir.resolve("nope")));
        assertTrue(u.getMessage().contains("nope") && u.getMessage().contains("no such file"), u.getMessage());
    }

    @Test
    void missingShard() throws Exception {
        CheckpointWriter.writeSharded(dir, model(), 32, null);
        Files.delete(dir.resolve("model-00002-of-00003.safetensors"));
        ModelFormatException e = assertThrows(ModelFormatException.class, () -> CheckpointReader.open(dir));
        String m = e.getMessage();
        assertTrue(m.startsWith(dir.resolve("model.safetensors.index.json").toString()), m);
        assertTrue(m.contains("[model-00002-of-00003.safetensors]") && m.contains("missing"), m);
    }

    @Test
    void indexNamesATensorItsShardLacks() throws Exception {
        CheckpointWriter.writeSharded(dir, model(), 32, null);
        Path index = dir.resolve("model.safetensors.index.json");
        Files.writeString(index, Files.readString(index).replace("\"layers.4.weight\"", "\"layers.4.weigth\""));
        ModelFormatException e = assertThrows(ModelFormatException.class, () -> CheckpointReader.open(dir));
        String m = e.getMessage();
        assertTrue(m.startsWith(index.toString()), m);
        assertTrue(m.contains("'layers.4.weigth'") && m.contains("model-00003-of-00003.safetensors")
                && m.contains("close names: layers.4.weight"), m);
    }

    @Test
    void missingTensorNameInCheckpoint() throws Exception {
        CheckpointWriter.writeSharded(dir, model(), 32, null);
        try (CheckpointReader r = CheckpointReader.open(dir)) {
            assertFalse(r.has("layers.9.weight"));
            ModelFormatException e = assertThrows(ModelFormatException.class, () -> r.tensor("layers.9.weight"));
            assertTrue(e.getMessage().contains("model.safetensors.index.json") && e.getMessage().contains("no tensor 'layers.9.weight'")
                    && e.getMessage().contains("close names: layers."), e.getMessage());
            assertThrows(ModelFormatException.class, () -> r.info("x"));
        }
    }

    @Test
    void corruptIndex() throws Exception {
        CheckpointWriter.writeSharded(dir, model(), 32, null);
        Path index = dir.resolve("model.safetensors.index.json");
        Files.writeString(index, "{\"metadata\": {}}");
        ModelFormatException e = assertThrows(ModelFormatException.class, () -> CheckpointReader.open(dir));
        assertTrue(e.getMessage().startsWith(index.toString()) && e.getMessage().contains("weight_map"), e.getMessage());
        Files.writeString(index, "{\"weight_map\": {\"a\": \"../outside.safetensors\"}}");
        e = assertThrows(ModelFormatException.class, () -> CheckpointReader.open(dir));
        assertTrue(e.getMessage().contains("outside the checkpoint directory"), e.getMessage());
        Files.writeString(index, "{\"weight_map\": ");
        e = assertThrows(ModelFormatException.class, () -> CheckpointReader.open(dir));
        assertTrue(e.getMessage().contains("not valid JSON"), e.getMessage());
    }

    @Test
    void closeUnmapsEveryShard() throws Exception {
        CheckpointWriter.writeSharded(dir, model(), 32, null);
        List<Tensor> views = new ArrayList<>();
        try (CheckpointReader r = CheckpointReader.open(dir)) {
            for (String n : r.names()) views.add(r.tensor(n));
        }
        for (Tensor t : views) assertThrows(IllegalStateException.class, () -> t.getFloat(0));
    }

    @Test
    void shardPlanIsGreedyInMapOrder() {
        Map<String, Tensor> m = model();
        List<Map<String, Tensor>> plan = CheckpointWriter.plan(m, 40);
        // 16+16=32 fits; 48 > 40 gets its own shard; 16+16 fits
        assertEquals(List.of(List.of("layers.0.weight", "layers.1.weight"), List.of("layers.2.weight"),
                List.of("layers.3.weight", "layers.4.weight")), plan.stream().map(s -> List.copyOf(s.keySet())).toList());
        assertEquals(5, CheckpointWriter.plan(m, 1).size());
        assertEquals(1, CheckpointWriter.plan(m, 112).size());
        assertEquals(2, CheckpointWriter.plan(m, 111).size());
    }
}
