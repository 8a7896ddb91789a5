package dev.qlora4j;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;

import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;

class TemporaryPropertyTest {
    private static final String KEY = "qlora4j.test.temporaryProperty";

    @AfterEach
    void clearKey() { System.clearProperty(KEY); }

    @Test
    void restoresThePreviousValue() {
        System.setProperty(KEY, "before");
        try (var p = TemporaryProperty.set(KEY, "inside")) {
            assertEquals("inside", System.getProperty(KEY));
        }
        assertEquals("before", System.getProperty(KEY));
    }

    @Test
    void clearsAPropertyThatWasUnset() {
        assertNull(System.getProperty(KEY));
        try (var p = TemporaryProperty.set(KEY, "inside")) {
            assertEquals("inside", System.getProperty(KEY));
        }
        assertNull(System.getProperty(KEY));
    }

    @Test
    void nestedScopesRestoreInOrder() {
        System.setProperty(KEY, "outer-before");
        try (var outer = TemporaryProperty.set(KEY, "a")) {
            assertEquals("a", System.getProperty(KEY));
            try (var inner = TemporaryProperty.set(KEY, "b")) {
                assertEquals("b", System.getProperty(KEY));
            }
            assertEquals("a", System.getProperty(KEY));
        }
        assertEquals("outer-before", System.getProperty(KEY));
    }

    @Test
    void setToNullClearsInsideTheScope() {
        System.setProperty(KEY, "before");
        try (var p = TemporaryProperty.set(KEY, null)) {
            assertNull(System.getProperty(KEY));
        }
        assertEquals("before", System.getProperty(KEY));
    }

    @Test
    void clearClearsInsideTheScopeAndRestores() {
        System.setProperty(KEY, "before");
        try (var p = TemporaryProperty.clear(KEY)) {
            assertNull(System.getProperty(KEY));
        }
        assertEquals("before", System.getProperty(KEY));
    }

    @Test
    void aSecondCloseDoesNothing() {
        System.setProperty(KEY, "before");
        TemporaryProperty p = TemporaryProperty.set(KEY, "inside");
        p.close();
        assertEquals("before", System.getProperty(KEY));
        System.setProperty(KEY, "changed later");
        p.close();
        assertEquals("changed later", System.getProperty(KEY));
    }

    @Test
    void saveChangesNothingAndRestoresWhatTheTestSet() {
        System.setProperty(KEY, "before");
        try (TemporaryProperty p = TemporaryProperty.save(KEY)) {
            assertEquals("before", System.getProperty(KEY));
            System.setProperty(KEY, "set by the test");
        }
        assertEquals("before", System.getProperty(KEY));
    }
}
