package dev.qlora4j.io.tokenizer;

import java.time.ZonedDateTime;
import java.time.format.DateTimeFormatter;
import java.util.Locale;

/** Global functions transformers gives chat templates: raise_exception and strftime_now. */
public final class TemplateFunctions {
    private TemplateFunctions() {}

    /** Thrown by a template's raise_exception(message), e.g. when roles do not alternate. */
    public static final class TemplateRaisedException extends RuntimeException {
        public TemplateRaisedException(String message) {
            super(message);
        }
    }

    /** raise_exception(message): aborts rendering with the template's own message. */
    public static String raiseException(Object message) {
        throw new TemplateRaisedException(String.valueOf(message));
    }

    /** strftime_now(format): the local time formatted with Python strftime directives. */
    public static String strftimeNow(String format) {
        return strftime(ZonedDateTime.now(), format);
    }

    static String strftime(ZonedDateTime t, String format) {
        StringBuilder sb = new StringBuilder();
        for (int i = 0; i < format.length(); i++) {
            char c = format.charAt(i);
            if (c != '%' || i + 1 == format.length()) {
                sb.append(c);
                continue;
            }
            char d = format.charAt(++i);
            String pattern = switch (d) {
                case 'd' -> "dd";
                case 'm' -> "MM";
                case 'Y' -> "yyyy";
                case 'y' -> "yy";
                case 'b' -> "MMM";
                case 'B' -> "MMMM";
                case 'a' -> "EEE";
                case 'A' -> "EEEE";
                case 'H' -> "HH";
                case 'I' -> "hh";
                case 'M' -> "mm";
                case 'S' -> "ss";
                case 'p' -> "a";
                case 'j' -> "DDD";
                default -> null;
            };
            if (pattern != null) sb.append(DateTimeFormatter.ofPattern(pattern, Locale.ENGLISH).format(t));
            else if (d == '%') sb.append('%');
            else sb.append('%').append(d);
        }
        return sb.toString();
    }
}
